"""Classifiers built for a dataset's input shape and class count.

Every image model runs on any registered image dataset (C, H, W), from 1x8x8 digits to 3x32x32 CIFAR:
convolutional models end in adaptive average pooling, and downsampling is sized so that 8x8 inputs
still work. The mlp takes any input; a model refuses an input it is not built for (`needs_image`).
"""
import contextlib
import math

import torch.nn as nn
import torch.nn.functional as F

from hero_bench.errors import ConfigError
from hero_bench.registry import Registry, call_problem
from hero_bench.validation import integer, integers

FACTORY_ARGS = ("input_shape", "num_classes")  # what create() gives every model factory; model.args the rest
MODELS = Registry("model", check=lambda factory: call_problem(factory, keywords=FACTORY_ARGS))
MIN_CONV_SIZE = 8  # smallest image side the convolutional models are built for (digits)
MAX_WIDTH = 2**16  # widest layer a model.args value may ask for: more is a typo (and gigabytes of weights)


@contextlib.contextmanager
def eval_mode(model):
    """Put `model` in eval mode for the block and restore its previous train/eval mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def create(name, input_shape, num_classes, **model_args):
    """Build model `name` for inputs of shape input_shape (without the batch dimension) and
    num_classes outputs; model_args are the factory's own keyword arguments (model.args)."""
    check_args(name, model_args)
    return MODELS.get(name)(input_shape=tuple(input_shape), num_classes=num_classes, **model_args)


def check_args(name, model_args):
    """Refuse model.args that model `name` cannot be built with, before anything is built (the
    schema calls this for the experiment and for every sweep trial): keywords its factory does not
    take, and values its entry in ARG_CHECKS refuses."""
    MODELS.check(name, model_args, "model.args", skip=FACTORY_ARGS, values=ARG_CHECKS)


def needs_image(name, input_shape):
    """Refuse anything but images (C, H, W) of at least MIN_CONV_SIZE pixels a side."""
    if len(input_shape) != 3 or min(input_shape[1:]) < MIN_CONV_SIZE:
        raise ConfigError(f"model {name!r} needs images of at least {MIN_CONV_SIZE}x{MIN_CONV_SIZE}, got {input_shape}")


@MODELS.register("mlp")
def mlp(*, input_shape, num_classes, hidden=(128, 128)):
    """Flatten, then Linear-ReLU layers of the `hidden` widths, then a Linear classifier."""
    widths = [math.prod(input_shape), *hidden]
    layers = [nn.Flatten()]
    for fan_in, fan_out in zip(widths, widths[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(widths[-1], num_classes))
    return nn.Sequential(*layers)


@MODELS.register("lenet5")
def lenet5(*, input_shape, num_classes):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling: conv5(6)-pool-conv5(16)-pool-120-84-K.

    Both convolutions pad by 2 so the image keeps its size through them, and an adaptive pool brings
    the 16 feature maps to the classic 5x5 whatever the input (8x8 digits give 2x2 maps, repeated).
    """
    needs_image("lenet5", input_shape)
    return nn.Sequential(
        nn.Conv2d(input_shape[0], 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(5), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(inplace=True),
        nn.Linear(120, 84), nn.ReLU(inplace=True),
        nn.Linear(84, num_classes),
    )


@MODELS.register("mnist1d_cnn")
def mnist1d_cnn(*, input_shape, num_classes, channels=25):
    """The MNIST-1D paper's CNN for signals (C, L): three Conv1d of `channels` filters, kernels 5, 3, 3,
    stride 2, padding 1, ReLU after each, then a Linear classifier on the flattened features
    (25 x 5 for length 40: about 5k parameters with the published 25 channels)."""
    if len(input_shape) != 2:
        raise ConfigError(f"model 'mnist1d_cnn' needs signals (channels, length), got {input_shape}")
    length = input_shape[1]
    for kernel in (5, 3, 3):
        length = (length + 2 - kernel) // 2 + 1
    if length < 1:
        raise ConfigError(f"model 'mnist1d_cnn' needs signals of length 3 or more, got {input_shape}")
    return nn.Sequential(
        nn.Conv1d(input_shape[0], channels, 5, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(channels * length, num_classes),
    )


class BasicBlock(nn.Module):
    """y = relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x)), He et al. 2016.

    The shortcut is option A of the paper: identity, or when the block downsamples, every second
    pixel with the new channels zero-padded (no parameters, as in the CIFAR ResNets).
    """

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride = stride
        self.extra_channels = out_channels - in_channels

    def shortcut(self, x):
        if self.stride == 1 and self.extra_channels == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: conv3x3(16), three stages of n BasicBlocks with 16/32/64
    channels (strides 1, 2, 2), global average pooling, Linear(64, K). Kaiming-normal conv init."""

    def __init__(self, depth, in_channels, num_classes):
        super().__init__()
        blocks_per_stage = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, channels = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(channels, width, stride if i == 0 else 1))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@MODELS.register("resnet20")
def resnet20(*, input_shape, num_classes):
    """CIFAR ResNet-20 (He et al. 2016), 0.27M parameters."""
    needs_image("resnet20", input_shape)
    return CifarResNet(20, input_shape[0], num_classes)


@MODELS.register("resnet32")
def resnet32(*, input_shape, num_classes):
    """CIFAR ResNet-32 (He et al. 2016), 0.46M parameters."""
    needs_image("resnet32", input_shape)
    return CifarResNet(32, input_shape[0], num_classes)


@MODELS.register("resnet56")
def resnet56(*, input_shape, num_classes):
    """CIFAR ResNet-56 (He et al. 2016), 0.85M parameters."""
    needs_image("resnet56", input_shape)
    return CifarResNet(56, input_shape[0], num_classes)


VGG11_LAYERS = (64, "pool", 128, "pool", 256, 256, "pool", 512, 512, "pool", 512, 512, "pool")


@MODELS.register("vgg11_bn")
def vgg11_bn(*, input_shape, num_classes):
    """VGG-11 with BatchNorm for small images: conv3x3-BN-ReLU stacks, five 2x2 max pools, global
    average pooling, Linear(512, K).

    The pools round up (ceil_mode), so 28 -> 14 -> 7 -> 4 -> 2 -> 1 and an 8x8 input stays at 1x1
    once it gets there instead of vanishing.
    """
    needs_image("vgg11_bn", input_shape)
    layers, channels = [], input_shape[0]
    for spec in VGG11_LAYERS:
        if spec == "pool":
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        else:
            layers += [nn.Conv2d(channels, spec, 3, padding=1, bias=False), nn.BatchNorm2d(spec), nn.ReLU(inplace=True)]
            channels = spec
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    model = nn.Sequential(*layers)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


# torchvision's MobileNetV2 blocks (expansion t, channels c, repeats n, first stride s) with the
# 24-channel stage at stride 1 instead of 2: together with a stride-1 stem, 32x32 images reach the
# last stage at 4x4 (as in the usual CIFAR adaptation) instead of 1x1.
MOBILENET_V2_SMALL = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]


@MODELS.register("mobilenet_v2")
def mobilenet_v2(*, input_shape, num_classes):
    """torchvision's MobileNetV2 for small images: stride-1 stem taking the dataset's channels and
    three stride-2 stages instead of five (32x32 -> 4x4, 8x8 -> 1x1), global average pooling.

    No dropout before the classifier (torchvision's default is 0.2): like the other models, the
    loss is then a function of the weights alone, so SAM/HERO's repeated passes see the same network.
    """
    needs_image("mobilenet_v2", input_shape)
    import torchvision.models  # imported here: it takes seconds, and only this model needs it

    model = torchvision.models.mobilenet_v2(
        num_classes=num_classes, inverted_residual_setting=MOBILENET_V2_SMALL, dropout=0.0
    )
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(input_shape[0], stem.out_channels, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.features[0][0].weight, mode="fan_out")  # torchvision's own init for convs
    return model


# model name -> {model.args keyword: check(key, value)}: the values a factory cannot build with,
# refused by check_args before any trial starts. A model with arguments adds its entry, a plugin's
# model too (docs/extending.md).
WIDTHS = f"[1, {MAX_WIDTH}]"
ARG_CHECKS = {
    "mlp": {"hidden": integers(WIDTHS)},
    "mnist1d_cnn": {"channels": integer(WIDTHS)},
}
