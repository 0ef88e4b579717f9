"""The Hessian estimators against exact float64 Hessians: Lanczos λ_max (and its error bound), the
Hutchinson trace, the stochastic Lanczos quadrature density, and all of them from one setup."""
import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy.integrate import trapezoid  # numpy has it as np.trapezoid only from 2.0 on
from exact import exact_hessian, tiny_batch, tiny_mlp
from torch import nn

from hero_bench import config, hessian, metrics
from hero_bench.results import figures
from hero_bench.errors import ConfigError


def trained_tiny_mlp(x, y):
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(100):  # near a minimum the trace is not a small difference of large terms
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model


# ---------------------------------------------------------------------------------------------
# λ_max by Lanczos


def test_top_eigenvalue_and_trace_match_the_exact_hessian_of_a_tiny_mlp():
    x, y = tiny_batch(n=16)
    model = trained_tiny_mlp(x, y)
    exact = exact_hessian(model, F.cross_entropy, x, y)
    top = hessian.hessian_top_eigenvalue(model, F.cross_entropy, [(x, y)], tol=1e-3)
    assert top == pytest.approx(torch.linalg.eigvalsh(exact).max().item(), rel=1e-3)
    # One probe's standard deviation is sqrt(2 Σ_{i≠j} H_ij²) ≈ 0.52 tr(H) here: 1000 probes put 5% at 3σ.
    off_diagonal = (exact**2).sum() - (exact.diagonal() ** 2).sum()
    assert (2 * off_diagonal).sqrt() < 0.55 * torch.trace(exact)
    trace = hessian.hessian_trace(model, F.cross_entropy, [(x, y)], probes=1000)
    assert trace == pytest.approx(torch.trace(exact).item(), rel=0.05)


def test_top_eigenvalue_is_lambda_max_of_a_network_whose_most_negative_eigenvalue_is_larger_in_magnitude():
    model, (x, y) = tiny_mlp(seed=5, scale=3.0), tiny_batch(seed=5)  # weights x3: far from any minimum
    eigenvalues = torch.linalg.eigvalsh(exact_hessian(model, F.cross_entropy, x, y))
    assert -eigenvalues[0] > 1.2 * eigenvalues[-1] > 0  # power iteration would converge to λ_min
    for tol in (1e-3, 1e-8):
        top = hessian.hessian_top_eigenvalue(model, F.cross_entropy, [(x, y)], tol=tol)
        assert top == pytest.approx(eigenvalues[-1].item(), rel=max(tol, 1e-10))


class Twins(nn.Module):
    """Two identical tiny MLPs on the same inputs; the loss adds their cross-entropies, so
    H = diag(H₁, H₁): every eigenvalue of one twin's Hessian H₁ appears twice."""

    def __init__(self):
        super().__init__()
        self.left = tiny_mlp(seed=1)
        self.right = copy.deepcopy(self.left)

    def forward(self, x):
        return torch.stack([self.left(x), self.right(x)])


def twin_loss(outputs, targets):
    return F.cross_entropy(outputs[0], targets) + F.cross_entropy(outputs[1], targets)


def test_top_eigenvalue_of_a_doubly_degenerate_top_eigenvalue_matches_the_exact_hessian():
    x, y = tiny_batch(seed=1)
    eigenvalues = torch.linalg.eigvalsh(exact_hessian(Twins(), twin_loss, x, y)).flip(0)
    assert eigenvalues[0] == pytest.approx(eigenvalues[1].item(), rel=1e-12)
    assert eigenvalues[0] - eigenvalues[2] > 0.1 * eigenvalues[0]
    top = hessian.hessian_top_eigenvalue(Twins(), twin_loss, [(x, y)], tol=1e-8)
    assert top == pytest.approx(eigenvalues[0].item(), rel=1e-8)


def test_top_k_matches_the_exact_top_eigenvalues():
    model = tiny_mlp()
    x, y = tiny_batch()
    exact = torch.linalg.eigvalsh(exact_hessian(model, F.cross_entropy, x, y)).flip(0)[:3]
    top = hessian.hessian_top_k(model, F.cross_entropy, [(x, y)], 3, tol=1e-8)
    torch.testing.assert_close(torch.tensor(top, dtype=torch.float64), exact, rtol=1e-6, atol=1e-10)


class Quadratic(nn.Module):
    """outputs_i = w_i for the unit inputs e_i; with the loss below, L = (1/n) Σ_i ½ c_i w_i², H = diag(c)/n."""

    def __init__(self, n):
        super().__init__()
        self.w = nn.Parameter(torch.ones(n, dtype=torch.float64))

    def forward(self, x):
        return x @ self.w


def quadratic_loss(outputs, coefficients):
    return (0.5 * coefficients * outputs**2).mean()


def test_top_eigenvalue_is_the_largest_even_when_a_negative_eigenvalue_dominates():
    coefficients = torch.tensor([-9.0, 3.0, 1.5], dtype=torch.float64)  # H = diag(-3, 1, 0.5)
    batches = [(torch.eye(3, dtype=torch.float64), coefficients)]
    top = hessian.hessian_top_eigenvalue(Quadratic(3), quadratic_loss, batches, tol=1e-8, max_iter=1000)
    assert top == pytest.approx(1.0, rel=1e-6)
    assert hessian.hessian_top_k(Quadratic(3), quadratic_loss, batches, 3) == pytest.approx([1.0, 0.5, -3.0])


def test_the_ritz_residual_bounds_the_error_at_every_step_and_the_stop_meets_the_tolerance():
    x, y = tiny_batch(n=16)
    model = trained_tiny_mlp(x, y)
    eigenvalues = torch.linalg.eigvalsh(exact_hessian(model, F.cross_entropy, x, y))
    with hessian.hessian_operator(model, F.cross_entropy, [(x, y)]) as hvp:
        lanczos = hessian.Lanczos(hvp, hvp.random_vector(torch.Generator().manual_seed(0)))
        errors = []
        while lanczos.step():
            theta, _ = lanczos.ritz()
            residual = lanczos.betas[-1] * lanczos._eigh()[1][-1, -1].abs().item()
            # Ritz values lie inside the spectrum, and some eigenvalue is within the residual of each
            assert eigenvalues[0] - 1e-12 <= theta[-1] <= theta[0] <= eigenvalues[-1] + 1e-12
            assert (eigenvalues - theta[0]).abs().min() <= residual + 1e-12
            errors.append((eigenvalues[-1] - theta[0]).item() / eigenvalues[-1].item())
    assert errors[-1] < 1e-12 and errors[0] > 0.1  # it did converge, from far
    for tol in (1e-1, 1e-2, 1e-4):
        top = hessian.hessian_top_eigenvalue(model, F.cross_entropy, [(x, y)], tol=tol)
        assert abs(top - eigenvalues[-1].item()) <= tol * eigenvalues[-1].item()


def test_the_default_tolerance_finds_lambda_max_of_a_trained_quickstart_model_whose_top_two_are_close():
    # A quickstart trial whose two top eigenvalues are 8% apart (3.69 and 3.38): at tol 1e-2 Lanczos
    # stopped at 3.34, 9.4% low, below the second. The reference is SciPy's ARPACK on the same products.
    from scipy.sparse.linalg import LinearOperator, eigsh

    from hero_bench import experiment_files, train

    quickstart = config.load(experiment_files.resolve("quickstart"), [])
    trial = config.for_trial(quickstart, {"optimizer.radius": 0.25, "optimizer.hessian_coef": 10.0,
                                          "data.label_noise": 0.4, "train.lr": 0.05, "train.seed": 0})
    trial = config.for_trial(trial, {"evaluate.hessian.trace": False})
    snapshots = []
    train.run_trial(trial, report=lambda result, state: snapshots.append(state))
    dataset, model, _ = train.build(trial, torch.device("cpu"))
    model.load_state_dict(snapshots[-1]["model"])
    h = trial.evaluate.hessian
    batches = hessian.hessian_sample(dataset, h.samples, h.batch_size, trial.train.seed)
    n = sum(p.numel() for p in model.parameters())
    with hessian.hessian_operator(model, F.cross_entropy, batches) as hvp:
        product = LinearOperator((n, n), dtype=np.float64,
                                 matvec=lambda v: hvp(torch.tensor(np.ravel(v), dtype=torch.float32)).double().numpy())
        reference = eigsh(product, k=2, which="LA", tol=1e-8, return_eigenvectors=False).max()
    found = hessian.hessian_top_eigenvalue(model, F.cross_entropy, batches, seed=trial.train.seed)
    assert abs(found - reference) <= 1e-2 * reference


def test_lanczos_warns_when_max_iter_ends_it_before_the_tolerance():
    x, y = tiny_batch(n=16)
    with pytest.warns(UserWarning, match="max_iter=2"):
        hessian.hessian_top_eigenvalue(trained_tiny_mlp(x, y), F.cross_entropy, [(x, y)], tol=1e-10, max_iter=2)


def test_hessian_of_several_batches_equals_hessian_of_the_concatenated_batch():
    model = tiny_mlp()
    x, y = tiny_batch(n=8)
    whole, split = [(x, y)], [(x[:3], y[:3]), (x[3:], y[3:])]
    trace = hessian.hessian_trace(model, F.cross_entropy, whole, probes=5)
    assert hessian.hessian_trace(model, F.cross_entropy, split, probes=5) == pytest.approx(trace, rel=1e-10)
    assert hessian.hessian_trace(model, F.cross_entropy, split, probes=5, keep_graph=False) == pytest.approx(
        trace, rel=1e-10
    )
    top = hessian.hessian_top_eigenvalue(model, F.cross_entropy, whole)
    assert hessian.hessian_top_eigenvalue(model, F.cross_entropy, split) == pytest.approx(top, rel=1e-10)
    assert hessian.hessian_top_eigenvalue(model, F.cross_entropy, split, keep_graph=False) == pytest.approx(
        top, rel=1e-10
    )
    assert hessian.hessian_top_k(model, F.cross_entropy, split, 2) == pytest.approx(
        hessian.hessian_top_k(model, F.cross_entropy, whole, 2), rel=1e-10
    )


def test_trace_is_exact_for_a_diagonal_hessian():
    # Rademacher probes have z_i² = 1, so zᵀDz = tr(D) for every probe.
    coefficients = torch.tensor([-9.0, 3.0, 1.5, 6.0], dtype=torch.float64)
    batches = [(torch.eye(4, dtype=torch.float64), coefficients)]
    assert hessian.hessian_trace(Quadratic(4), quadratic_loss, batches, probes=1) == pytest.approx(0.375)


def bn_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()
    model[1].running_mean.normal_()
    model[1].running_var.uniform_(0.5, 2.0)
    return model.train()


def test_batchnorm_uses_running_statistics_so_any_batch_split_gives_the_same_hessian():
    model = bn_model()
    x, y = tiny_batch(n=8)
    stats = [model[1].running_mean.clone(), model[1].running_var.clone()]

    def top(batches):
        return hessian.hessian_top_eigenvalue(model, F.cross_entropy, batches, tol=1e-9, max_iter=1000)

    whole, split = top([(x, y)]), top([(x[:2], y[:2]), (x[2:], y[2:])])
    assert split == pytest.approx(whole, rel=1e-7)
    assert model.training  # mode restored
    assert torch.equal(model[1].running_mean, stats[0]) and torch.equal(model[1].running_var, stats[1])
    exact = exact_hessian(model.eval(), F.cross_entropy, x, y)
    assert whole == pytest.approx(torch.linalg.eigvalsh(exact).max().item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Density by stochastic Lanczos quadrature


def test_density_weights_sum_to_one_and_the_broadened_density_integrates_to_one():
    x, y = tiny_batch(n=16)
    nodes, weights = hessian.hessian_density(tiny_mlp(), F.cross_entropy, [(x, y)], runs=3, steps=10)
    assert len(nodes) == len(weights) == 30 and (weights >= 0).all()
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-12)
    width = (nodes.max() - nodes.min()).item()
    grid = np.linspace(nodes.min().item() - width, nodes.max().item() + width, 200_001)
    for sigma in (0.01 * width, 0.1 * width):
        curve = figures.density_curve(nodes, weights, grid, sigma)
        assert trapezoid(curve, grid) == pytest.approx(1.0, abs=1e-6)


def test_density_moments_match_the_exact_hessian_trace_and_its_square_over_the_dimension():
    x, y = tiny_batch(n=16)
    model = trained_tiny_mlp(x, y)
    exact = exact_hessian(model, F.cross_entropy, x, y)
    d, runs = len(exact), 400
    nodes, weights = hessian.hessian_density(model, F.cross_entropy, [(x, y)], runs=runs, steps=4, seed=1)
    # Per run Σ τθ = qᵀHq with q = z/√d: the Hutchinson estimate over the same Rademacher z, over d.
    first = (weights * nodes).sum().item()
    same_probes = hessian.hessian_trace(model, F.cross_entropy, [(x, y)], probes=runs, seed=1)
    assert first == pytest.approx(same_probes / d, rel=1e-10)
    # ... and E[qᵀHq] = tr(H)/d, std sqrt(2 Σ_{i≠j} H_ij²)/d per run; 4 std of the mean of 400 runs:
    spread = math.sqrt(2 * ((exact**2).sum() - (exact.diagonal() ** 2).sum()).item()) / d / math.sqrt(runs)
    assert abs(first - torch.trace(exact).item() / d) <= 4 * spread
    # Σ τθ² = qᵀH²q (4 steps are exact to degree 7), whose expectation is tr(H²)/d.
    second = (weights * nodes**2).sum().item()
    assert second == pytest.approx(torch.trace(exact @ exact).item() / d, rel=0.15)


def test_density_of_a_full_krylov_space_has_the_exact_eigenvalues_as_nodes():
    model = tiny_mlp()
    x, y = tiny_batch()
    eigenvalues = torch.linalg.eigvalsh(exact_hessian(model, F.cross_entropy, x, y))
    d = len(eigenvalues)
    nodes, weights = hessian.hessian_density(model, F.cross_entropy, [(x, y)], runs=1, steps=2 * d)
    assert len(nodes) <= d  # the run stops once its Krylov space is invariant
    distance = (nodes[:, None] - eigenvalues[None, :]).abs().amin(dim=1)
    assert distance[weights > 1e-10].max() < 1e-8


# ---------------------------------------------------------------------------------------------
# One setup for all three


def test_shared_setup_gives_the_separate_calls_values_from_one_graph_and_one_eval_switch():
    model = bn_model()
    x, y = tiny_batch(n=8)
    forwards = []
    model.register_forward_hook(lambda module, inputs, output: forwards.append(module.training))
    batches = [(x, y)]
    shared = hessian.hessian_curvature(model, F.cross_entropy, batches, density=(2, 5), probes=7, seed=3)
    assert forwards == [False]  # one graph, built in eval mode
    assert model.training
    forwards.clear()
    assert shared["top_eigenvalue"] == hessian.hessian_top_eigenvalue(model, F.cross_entropy, batches, seed=3)
    assert shared["trace"] == hessian.hessian_trace(model, F.cross_entropy, batches, probes=7, seed=3)
    nodes, weights = hessian.hessian_density(model, F.cross_entropy, batches, runs=2, steps=5, seed=3)
    assert torch.equal(shared["density"][0], nodes) and torch.equal(shared["density"][1], weights)
    assert len(forwards) == 3


# ---------------------------------------------------------------------------------------------
# The evaluator's density key and its configuration


def blob_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return type("Data", (), {"train_x": x, "train_y": y})


def test_evaluator_reports_the_density_as_json_nodes_and_weights_of_the_seed_sample():
    torch.manual_seed(0)
    model, data = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)), blob_data()
    cfg = config.from_dict({"evaluate": {"hessian": {"samples": 32, "density": {"runs": 2, "steps": 6}}}}).evaluate
    result = metrics.evaluate_hessian(model, data, cfg, seed=4)
    assert set(result) == {"hessian_top_eig", "hessian_trace", "hessian_density"}
    value = json.loads(result["hessian_density"])
    assert set(value) == {"nodes", "weights"}
    batches = hessian.hessian_sample(data, 32, 512, seed=4)
    nodes, weights = hessian.hessian_density(model, F.cross_entropy, batches, runs=2, steps=6, seed=4)
    read_nodes, read_weights = metrics.density_from_json(result["hessian_density"])
    np.testing.assert_allclose(read_nodes, nodes.numpy(), rtol=1e-6)
    np.testing.assert_allclose(read_weights, weights.numpy(), rtol=1e-6)
    assert "hessian_density" not in metrics.evaluate_hessian(model, data, config.from_dict({}).evaluate, seed=4)


def test_density_is_off_by_default_and_set_from_yaml_or_a_dotted_override():
    assert config.from_dict({}).evaluate.hessian.density is None
    loaded = config.load("experiments/quickstart.yaml", ["evaluate.hessian.density.steps=30"])
    assert (loaded.evaluate.hessian.density.runs, loaded.evaluate.hessian.density.steps) == (1, 30)
    assert config.check_value("evaluate.hessian.density.runs", 3) == 3


@pytest.mark.parametrize("density, field", [
    ({"runs": 0}, "evaluate.hessian.density.runs must be in"),
    ({"steps": 2.5}, "evaluate.hessian.density.steps must be int"),
    ({"probes": 3}, "unknown key 'evaluate.hessian.density.probes'"),
    (5, "evaluate.hessian.density must be a mapping with keys runs, steps or null"),
])
def test_bad_density_settings_are_rejected_naming_the_field(density, field):
    with pytest.raises(ConfigError, match=field):
        config.from_dict({"evaluate": {"hessian": {"density": density}}})


def test_hessian_functions_reject_bad_counts_before_any_work():
    model, batches = tiny_mlp(), [tiny_batch()]
    with pytest.raises(ConfigError, match="density runs and steps must be >= 1"):
        hessian.hessian_density(model, F.cross_entropy, batches, runs=0)
    with pytest.raises(ConfigError, match="evaluate.hessian.tol"):
        hessian.hessian_top_eigenvalue(model, F.cross_entropy, batches, tol=0)


@pytest.mark.usefixtures("local_ray")
def test_a_sweep_carries_each_trials_density_into_trials_csv_and_draws_the_density_figure(tmp_path):
    from hero_bench import sweep
    from hero_bench.results import outputs
    from hero_bench.train import run_trial
    from tiny import experiment

    raw = experiment(name="density", evaluate={"hessian": {"samples": 64, "top_eigenvalue": False, "trace": False,
                                                           "density": {"runs": 2, "steps": 5}}},
                     sweep={"space": {"optimizer.name": ["sgd", "sam"]}, "seeds": [0]})
    base = config.from_dict(raw)
    sweep.run(base, results_root=tmp_path, storage=str(tmp_path / "ray"))
    outputs.write(tmp_path / "density")
    written = pd.read_csv(tmp_path / "density" / "trials.csv")
    assert sorted(written["optimizer.name"]) == ["sam", "sgd"]
    for _, row in written.iterrows():
        direct = run_trial(config.for_trial(base, {"optimizer.name": row["optimizer.name"], "train.seed": 0}))
        assert row["hessian_density"] == direct["hessian_density"]  # as the trial computed it, through tune.report
        nodes, weights = metrics.density_from_json(row["hessian_density"])
        assert len(nodes) == 10 and weights.sum() == pytest.approx(1.0, abs=1e-6)
    assert (tmp_path / "density" / "figures" / "density_synthetic_mlp.png").is_file()
