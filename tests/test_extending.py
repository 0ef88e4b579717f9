"""docs/extending.md's example plugin as written: the guide's code is examples/my_plugin.py, each piece
it registers is checked against an independent computation (GSAM against float64 autograd outside
hero-bench's Step), and examples/my_experiment.yaml runs as a short sweep."""
import copy
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from exact import tiny_batch, tiny_mlp
from hero_bench import config, data, methods, metrics, models, plugins, trials
from hero_bench.train import run_trial
from tiny import NO_EVAL

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
GUIDE = ROOT / "docs" / "extending.md"


def code_blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), flags=re.S)


@pytest.fixture
def example(plugin_sandbox):
    """examples/my_plugin.py, loaded as an experiment next to it loads it."""
    plugins.load(["my_plugin"], [EXAMPLES])


def test_the_guide_shows_the_example_plugin_whole_and_in_order_and_the_example_experiment():
    assert "\n\n\n".join(block.strip("\n") for block in code_blocks("python")) + "\n" == (EXAMPLES / "my_plugin.py").read_text()
    assert code_blocks("yaml") == [(EXAMPLES / "my_experiment.yaml").read_text()]


def test_the_example_trains_a_trial_and_reports_its_metric(example):
    result = run_trial(config.from_dict({
        "plugins": ["my_plugin"], "data": {"name": "moons", "args": {"num_samples": 400}}, "model": {"name": "tanh_mlp"},
        "optimizer": {"name": "samgn", "hessian_coef": 0.1}, "train": {"epochs": 3, "batch_size": 50, "lr": 0.1, "threads": 1},
        "evaluate": NO_EVAL,
    }))
    assert result["status"] == "completed" and result["test_acc"] > 75  # the moons are nearly linearly separable
    assert 50 <= result["test_confidence"] <= 100  # two classes: the larger probability is at least one half
    # 360 training samples, batch 50: 8 steps an epoch, each W, W + z and the finite difference at W + z
    assert result["grad_evals"] == 3 * 8 * 3


def test_the_example_metric_equals_a_hand_computed_mean_confidence(example):
    moons = data.load("moons", num_samples=300)
    torch.manual_seed(0)
    model = models.create("tanh_mlp", moons.input_shape, moons.num_classes, width=8)
    hidden, out = model[1], model[3]
    logits = torch.tanh(moons.test_x.flatten(1) @ hidden.weight.T + hidden.bias) @ out.weight.T + out.bias
    probabilities = logits.exp() / logits.exp().sum(dim=1, keepdim=True)
    expected = 100 * probabilities.max(dim=1).values.mean().item()
    got = metrics.METRICS.get("confidence")(model, moons, None, 0)
    assert got == {"test_confidence": pytest.approx(expected, rel=1e-5)}


def steps(name, count=5, **hyper):
    """The parameters and method after `count` steps of `name` on moons batches, from one seed; the
    model has dropout, so a step's passes must also share their random numbers."""
    moons = data.load("moons", num_samples=250)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 2))
    optimizer = methods.create(name, model, **hyper)
    for x, y in list(zip(moons.train_x.split(50), moons.train_y.split(50)))[:count]:
        optimizer.step(lambda: F.cross_entropy(model(x), y))
    return [p.detach().clone() for p in model.parameters()], optimizer


def test_the_example_rule_is_sam_at_zero_hessian_coef_and_its_own_family_otherwise(example):
    samgn, _ = steps("samgn", hessian_coef=0.0)
    sam, _ = steps("sam", radius=0.05)
    assert all(torch.equal(a, b) for a, b in zip(samgn, sam))
    assert methods.family("samgn", 0.05, 0.0) == "sam" and methods.family("samgn", 0.05, 0.1) == "samgn"
    assert methods.family("samgn", 0.0, 0.1) == "gradnorm"  # ρ = 0: the term along g at W is gradnorm's


def gsam_reference(model, x, y, radius, alpha, adaptive):
    """GSAM's gradient on one batch, in float64 on a copy of `model`, by torch.autograd on the flat
    parameter vector w (nothing of hero-bench's Step):
        g = ∇L(w),  z = ρ T² g / ‖T g‖ (T = |w| if adaptive else 1),  g_z = ∇L(w + z),
        g⊥ = g − (g·g_z / ‖g_z‖²) g_z,  gradient = g_z − α g⊥."""
    copied = copy.deepcopy(model).double()
    params = list(copied.parameters())
    w = parameters_to_vector(params).detach()

    def grad_at(point):
        vector_to_parameters(point, params)
        return parameters_to_vector(torch.autograd.grad(F.cross_entropy(copied(x.double()), y), params))

    g = grad_at(w)
    t = w.abs() if adaptive else torch.ones_like(w)
    g_z = grad_at(w + radius * t**2 * g / (t * g).norm())
    g_perp = g - (g @ g_z) / (g_z @ g_z) * g_z
    return g_z - alpha * g_perp, g_z, g_perp


@pytest.mark.parametrize("adaptive", [True, False])
def test_gsam_applies_g_at_w_plus_z_minus_alpha_times_the_orthogonal_part_of_g(example, adaptive):
    x, y = tiny_batch(n=16)
    radius, alpha, lr = 0.3, 0.5, 0.1
    model = tiny_mlp(seed=1)
    expected, g_z, g_perp = gsam_reference(model, x, y, radius, alpha, adaptive)
    before = parameters_to_vector(model.parameters()).detach().clone()
    optimizer = methods.create("gsam", model, lr=lr, momentum=0.0, weight_decay=0.0, radius=radius, adaptive=adaptive,
                               args={"alpha": alpha})
    optimizer.step(lambda: F.cross_entropy(model(x), y))
    applied = (before - parameters_to_vector(model.parameters()).detach()) / lr  # plain SGD: W ← W − lr · gradient
    assert torch.allclose(applied, expected, rtol=1e-9, atol=1e-12 * expected.norm().item())
    # the orthogonal part matters here, so a method that applied g(W + z) alone would fail
    assert (alpha * g_perp).norm() > 0.01 * g_z.norm() and (applied - g_z).norm() > 1e3 * (applied - expected).norm()
    assert optimizer.grad_evals == 2 and optimizer.hvp_evals == 0


def test_gsam_at_zero_alpha_takes_exactly_sams_steps_and_is_its_own_family(example):
    gsam, gsam_method = steps("gsam", radius=0.05, args={"alpha": 0.0})
    sam, sam_method = steps("sam", radius=0.05)
    assert all(torch.equal(a, b) for a, b in zip(gsam, sam))
    assert gsam_method.grad_evals == sam_method.grad_evals == 2 * 5
    alpha, _ = steps("gsam", radius=0.05, args={"alpha": 0.1})
    assert not all(torch.equal(a, b) for a, b in zip(alpha, sam))
    assert methods.family("gsam", 0.05, 0.0) == "gsam" and methods.family("gsam", 0.0, 0.0) == "gsam"


@pytest.mark.slow
def test_the_example_experiment_runs_as_a_short_sweep(tmp_path):
    """hero-bench sweep examples/my_experiment.yaml from another folder (the plugin is found next to the
    experiment and shipped to the trials), one seed and one epoch: 6 trials."""
    from processes import hero_bench_process, wait_for

    args = ["sweep", str(EXAMPLES / "my_experiment.yaml"), "--set", "sweep.seeds=[0]", "--set", "train.epochs=1",
            "--wandb", "disabled", "--results", "results", "--storage", "ray"]
    with hero_bench_process(args, tmp_path) as (proc, collect, _):
        assert wait_for(lambda: proc.poll() is not None, proc, collect, timeout=600)
    log = (tmp_path / "hero-bench-0.log").read_text()
    assert proc.returncode == 0, log[-3000:]
    folder = tmp_path / "results" / "my_experiment"
    table = pd.read_csv(folder / "trials.csv")
    assert len(table) == 6 and set(table[trials.STATUS]) == {"completed"}
    assert sorted(trials.family(table)) == ["gsam", "gsam", "sam", "sam", "sgd", "sgd"]
    # 900 training samples, batch 50: 18 steps, two gradients a step for sam and gsam
    assert dict(zip(table[trials.METHOD], table["grad_evals"])) == {"sgd": 18, "sam": 36, "gsam": 36}
    assert table["test_confidence"].between(50, 100).all()
    board = pd.read_csv(folder / "leaderboard.csv")
    assert set(board[trials.FAMILY]) == {"sgd", "sam", "gsam"} and board["test_confidence_mean"].notna().all()
