"""Plugin modules the tests write into temporary folders, where nothing imports them unless told to:
the lab's own model and metric, and plugins that go wrong in each way hero-bench must refuse."""
from pathlib import Path

# A model and a metric declared in the catalog. Each import appends "pid file" to the file named by
# $LAB_PLUGIN_IMPORTS, so a test can see which process imported which copy of the module.
LAB = '''
import math
import os

from torch import nn

from hero_bench.catalog import Metric, declare
from hero_bench.metrics import METRICS
from hero_bench.models import MODELS

if os.environ.get("LAB_PLUGIN_IMPORTS"):
    with open(os.environ["LAB_PLUGIN_IMPORTS"], "a") as log:
        log.write(f"{os.getpid()} {__file__}\\n")


@MODELS.register("lab_net")
def lab_net(*, input_shape, num_classes, width=5):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(), nn.Linear(width, num_classes))


@METRICS.register("lab_size")
def lab_size(model, data, evaluate, seed):
    return {"lab_parameters": sum(p.numel() for p in model.parameters())}


declare(Metric("lab_parameters", "trainable parameters of the model", decimals=0, shown=True, source="lab_size"))
'''


def lab_parameters(input_shape, num_classes, width=5):
    """lab_net's parameter count, by hand: two Linear layers with their biases."""
    inputs = 1
    for size in input_shape:
        inputs *= size
    return (inputs + 1) * width + (width + 1) * num_classes


def write(folder, name, source=LAB):
    """The module `name` (e.g. lab_plugin) as a file in `folder`; returns its path."""
    path = Path(folder) / f"{name}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    return path
