"""A hero-bench plugin: a dataset, a model, a metric and two methods of my own (docs/extending.md).

examples/my_experiment.yaml names it (`plugins: [my_plugin]`), so hero-bench imports it from the
experiment file's folder before it reads the rest of the file, and a sweep ships it to every trial.
`hero-bench list --plugin my_plugin`, run in this folder, shows what it registers.
"""
import math

import torch
from sklearn.datasets import make_moons
from torch import nn

from hero_bench.catalog import Metric, declare
from hero_bench.data import DATASETS, Source
from hero_bench.methods import Rule, register
from hero_bench.metrics import METRICS
from hero_bench.models import ARG_CHECKS, MODELS, WIDTHS, eval_mode
from hero_bench.validation import integer


@DATASETS.register("moons")
def moons(*, root, download, num_samples=1000, noise=0.2):
    """scikit-learn's two interleaving half circles, as (1, 2) signals: 2 classes, made on the spot
    (so `root` and `download`, which every dataset is given, go unused)."""
    x, y = make_moons(num_samples + 500, noise=noise, random_state=0)
    x, y = torch.tensor(x, dtype=torch.float32).view(-1, 1, 2), torch.tensor(y)
    return Source(x[:num_samples], y[:num_samples], x[num_samples:], y[num_samples:], num_classes=2)


@MODELS.register("tanh_mlp")
def tanh_mlp(*, input_shape, num_classes, width=32):
    """Flatten, one Linear-Tanh layer of `width` units, then a Linear classifier."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.Tanh(),
                         nn.Linear(width, num_classes))


ARG_CHECKS["tanh_mlp"] = {"width": integer(WIDTHS)}  # model.args.width: an integer in [1, 65536], checked up front


@METRICS.register("confidence")
def evaluate_confidence(model, data, evaluate, seed):
    """test_confidence: the mean largest softmax probability on the test set, in percent."""
    with eval_mode(model), torch.no_grad():
        confidence = model(data.test_x).softmax(dim=1).amax(dim=1).mean().item()
    return {"test_confidence": 100 * confidence}


declare(Metric("test_confidence", "mean largest softmax probability on the test set", unit="%", decimals=2,
               kind="confidence", shown=True, source="confidence"))


register(Rule("samgn", perturbs=True, hessian="g", objective="L(W + z) + γ‖g(W + z)‖²", radius=0.05, hessian_coef=0.1))


def gsam(step, *, alpha=0.1):
    """GSAM (Zhuang et al. 2022, surrogate gap guided SAM): g(W + z) − α g⊥, where g⊥ is the part of
    g(W) orthogonal to g(W + z). Minus g(W + z) descends the perturbed loss L(W + z); plus α g⊥ is
    orthogonal to it and raises L(W), so it lowers the surrogate gap L(W + z) − L(W) that measures
    sharpness without undoing the descent."""
    g = step.gradient()  # g(W)
    g_z = step.gradient_at(step.perturbation(g))  # g(W + z), z = ρ T² g / ‖T g‖ as for SAM
    # g⊥ = g − (g·g_z / ‖g_z‖²) g_z, the inner products over all parameters at once
    along = sum((gi * gzi).sum() for gi, gzi in zip(g, g_z)) / (sum(gzi.square().sum() for gzi in g_z) + 1e-12)
    return [gzi - alpha * (gi - along * gzi) for gi, gzi in zip(g, g_z)]


register(Rule("gsam", perturbs=True, hessian=None, objective="L(W + z) with the surrogate gap L(W + z) − L(W) lowered",
              radius=0.05, gradient=gsam))
