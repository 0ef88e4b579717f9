"""Models: every registered model runs on every input shape it is built for and refuses the others;
the CIFAR ResNets have He et al.'s size, the MNIST-1D CNN the published one."""
import pytest
import torch
import torch.nn as nn

from hero_bench import models
from hero_bench.errors import ConfigError

SHAPES = {"image": [(1, 8, 8), (1, 28, 28), (3, 32, 32)], "signal": [(1, 40), (2, 64)]}
ACCEPTS = {"mlp": ("image", "signal"), "mnist1d_cnn": ("signal",)}  # every other model: images


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", models.MODELS.names())
def test_every_model_gives_logits_for_the_shapes_it_is_built_for_and_refuses_the_others(name):
    torch.manual_seed(0)
    accepted = ACCEPTS.get(name, ("image",))
    for kind, shapes in SHAPES.items():
        for shape in shapes:
            if kind not in accepted:
                with pytest.raises(ConfigError, match=f"model '{name}' needs"):
                    models.create(name, shape, num_classes=7)
                continue
            logits = models.create(name, shape, num_classes=7)(torch.randn(2, *shape))
            assert logits.shape == (2, 7), (name, shape)
            assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", models.MODELS.names())
def test_repeated_training_mode_passes_agree_so_sam_and_hero_see_one_network(name):
    torch.manual_seed(0)
    shape = SHAPES[ACCEPTS.get(name, ("image",))[0]][0]
    model = models.create(name, shape, num_classes=3).train()
    x = torch.randn(4, *shape)
    assert torch.equal(model(x), model(x))


def test_registry_holds_the_designed_models():
    assert models.MODELS.names() == ["lenet5", "mlp", "mnist1d_cnn", "mobilenet_v2", "resnet20", "resnet32", "resnet56",
                                     "vgg11_bn"]


def test_mnist1d_cnn_is_the_published_shape_with_about_5k_parameters():
    model = models.create("mnist1d_cnn", (1, 40), 10)
    convs = [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0])
             for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert convs == [(1, 25, 5, 2, 1), (25, 25, 3, 2, 1), (25, 25, 3, 2, 1)]
    # lengths 40 -> 19 -> 10 -> 5: the head reads 25 x 5 features
    assert count_parameters(model) == (5 * 25 + 25) + 2 * (3 * 25 * 25 + 25) + (25 * 5 * 10 + 10) == 5210
    assert count_parameters(models.create("mnist1d_cnn", (1, 40), 10, channels=100)) > 50_000  # model.args widens it


def resnet_parameter_count(depth, in_channels, num_classes):
    """He et al.'s CIFAR ResNet with option-A shortcuts, counted layer by layer: a conv3x3 has 9*in*out
    weights, a BatchNorm 2*channels, the classifier 64*K + K."""
    n = (depth - 2) // 6
    total = 9 * in_channels * 16 + 2 * 16
    channels = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += 9 * channels * width + 2 * width + 9 * width * width + 2 * width
            channels = width
    return total + 64 * num_classes + num_classes


@pytest.mark.parametrize("depth", [20, 32, 56])
def test_cifar_resnets_have_the_parameter_count_of_he_et_al(depth):
    model = models.create(f"resnet{depth}", (3, 32, 32), 10)
    assert count_parameters(model) == resnet_parameter_count(depth, 3, 10)


def test_resnet20_has_about_0_27m_parameters():
    assert 0.265e6 < count_parameters(models.create("resnet20", (3, 32, 32), 10)) < 0.275e6


def test_mlp_hidden_widths_come_from_the_model_args():
    model = models.create("mlp", (1, 8, 8), 10, hidden=[32, 16, 8])
    shapes = [tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Linear)]
    assert shapes == [(32, 64), (16, 32), (8, 16), (10, 8)]


def test_mobilenet_v2_takes_the_dataset_channels_and_downsamples_32x32_to_4x4():
    model = models.create("mobilenet_v2", (1, 32, 32), 10)
    stem = model.features[0][0]
    assert stem.in_channels == 1 and stem.stride == (1, 1)
    assert model.features(torch.randn(2, 1, 32, 32)).shape[-2:] == (4, 4)


def test_unknown_model_and_unknown_argument_raise_config_error():
    with pytest.raises(ConfigError, match="known: lenet5, mlp"):
        models.create("resnet19", (3, 32, 32), 10)
    with pytest.raises(ConfigError, match="model.args.hidden"):
        models.create("resnet20", (3, 32, 32), 10, hidden=[8])
    with pytest.raises(ConfigError, match="at least 8x8"):
        models.create("lenet5", (1, 4, 4), 10)
