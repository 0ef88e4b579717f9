"""README's "Extending hero-bench" examples, run as written: a dataset, a model, a method and a metric
registered, then used by a trial and checked against independent computations."""
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hero_bench import config, data, methods, metrics, models
from hero_bench.train import run_trial

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def extended(monkeypatch):
    """The README's registrations, made into copies of the registries that the test restores after."""
    for registry in (data.DATASETS, models.MODELS, methods.METHODS, metrics.METRICS):
        monkeypatch.setattr(registry, "_factories", dict(registry._factories))
    section = README.read_text().split("## Extending hero-bench", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 4
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})


def test_the_readme_extensions_train_a_trial_and_report_their_metric(extended):
    result = run_trial(config.from_dict({
        "data": {"name": "moons", "args": {"num_samples": 400}}, "model": {"name": "logistic"},
        "optimizer": {"name": "samgn", "hessian_coef": 0.1},
        "train": {"epochs": 3, "batch_size": 50, "lr": 0.1, "threads": 1},
        "evaluate": {"ptq_bits": [], "hessian": {"top_eigenvalue": False, "trace": False}, "weight_noise": {"sigmas": []}},
    }))
    assert result["status"] == "completed" and result["test_acc"] > 75  # the moons are nearly linearly separable
    # 360 training samples, batch 50: 8 steps an epoch, each W, W + z and the finite difference at W + z
    assert result["grad_evals"] == 3 * 8 * 3


def test_the_readme_metric_equals_a_hand_computed_mean_confidence(extended):
    moons = data.load("moons", num_samples=300)
    torch.manual_seed(0)
    model = models.create("logistic", moons.input_shape, moons.num_classes)
    logits = moons.test_x.flatten(1) @ model[1].weight.T + model[1].bias
    probabilities = logits.exp() / logits.exp().sum(dim=1, keepdim=True)
    expected = 100 * probabilities.max(dim=1).values.mean().item()
    got = metrics.METRICS.get("confidence")(model, moons, None, 0)
    assert got == {"test_confidence": pytest.approx(expected, rel=1e-5)}


def test_the_readme_method_is_sam_at_zero_hessian_coef_and_its_own_family_otherwise(extended):
    moons = data.load("moons", num_samples=200)
    weights = {}
    for name, hyper in (("samgn", dict(hessian_coef=0.0)), ("sam", dict(radius=0.05))):
        torch.manual_seed(0)
        model = models.create("logistic", moons.input_shape, moons.num_classes)
        optimizer = methods.create(name, model, **hyper)
        for x, y in zip(moons.train_x.split(50), moons.train_y.split(50)):
            optimizer.step(lambda: F.cross_entropy(model(x), y))
        weights[name] = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(weights["samgn"], weights["sam"]))
    assert methods.family("samgn", 0.05, 0.0) == "sam" and methods.family("samgn", 0.05, 0.1) == "samgn"
    assert methods.family("samgn", 0.0, 0.1) == "gradnorm"  # ρ = 0: the term along g at W is gradnorm's
