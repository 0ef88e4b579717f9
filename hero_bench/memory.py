"""The memory a trial needs, estimated before its model is built, against what its device has.

The model is built on PyTorch's meta device, which allocates nothing, and run on a meta batch of
`train.batch_size` samples to size its activations. A trial holds PARAMETER_COPIES copies of the
parameters (the weights, their gradient, the momentum buffer, and the ascent point and gradient
that SAM and HERO keep) and ACTIVATION_COPIES of the activations of one batch (the values kept for
the backward pass, their gradients, HERO's second backward pass), all in float32, plus its dataset
(held whole on the device). A rough estimate, made to stop a mistake (a width with a digit too many)
before it allocates tens of gigabytes: `check` refuses a trial whose estimate exceeds FRACTION of its
device's memory, with one line naming the model and the estimate.
"""
import os

import torch

from hero_bench import models
from hero_bench.errors import ConfigError

FRACTION = 0.9  # of the device's memory a trial may be estimated to need
PARAMETER_COPIES = 5
ACTIVATION_COPIES = 3
BYTES = 4  # float32


def estimate(name, input_shape, num_classes, model_args, batch_size):
    """(parameters, bytes) of model `name` (model.args `model_args`) for inputs of `input_shape`,
    trained on batches of `batch_size`: its parameter count, and the bytes of the parameters' and
    activations' copies a trial holds (see the module docstring). Builds nothing but meta tensors."""
    sizes = []

    def record(module, inputs, output):
        sizes.append(output.numel() if isinstance(output, torch.Tensor) else 0)

    with torch.device("meta"):
        model = models.create(name, input_shape, num_classes, **model_args)
        for module in model.modules():
            if not any(True for _ in module.children()):  # a layer, not a container of layers
                module.register_forward_hook(record)
        model(torch.empty(batch_size, *input_shape))
    parameters = sum(p.numel() for p in model.parameters())
    return parameters, BYTES * (PARAMETER_COPIES * parameters + ACTIVATION_COPIES * sum(sizes))


def capacity(device):
    """(bytes of memory, how to name it) of a torch device: a GPU's own memory, or the machine's."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory, f"{device}'s memory"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "the machine's memory"


def check(model_config, batch_size, dataset, device):
    """Refuse (ConfigError) a trial of model `model_config` (name, args) at `batch_size` on `dataset`
    whose estimated memory exceeds FRACTION of `device`'s, before its model is built."""
    batch = min(batch_size, len(dataset.train_y))  # a batch holds at most the training set
    parameters, need = estimate(model_config.name, dataset.input_shape, dataset.num_classes, model_config.args, batch)
    tensors = (dataset.train_x, dataset.train_y, dataset.train_y_clean, dataset.val_x, dataset.val_y, dataset.test_x, dataset.test_y)
    need += sum(t.numel() * t.element_size() for t in tensors)
    have, where = capacity(device)
    if need > FRACTION * have:
        args = ", ".join(f"model.args.{key}={value}" for key, value in model_config.args.items())
        raise ConfigError(
            f"model {model_config.name}{f' ({args})' if args else ''} has {parameters:,} parameters: with the activations of a "
            f"batch of {batch} (train.batch_size) and the data, a trial needs about {need / 2**30:,.1f} GiB, more than "
            f"{FRACTION:.0%} of {where} ({have / 2**30:,.1f} GiB); choose a smaller model or train.batch_size")
