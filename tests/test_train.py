import math

import pytest
import torch

from hero_bench import config as config_module
from hero_bench.config import Config
from hero_bench.errors import ConfigError
from hero_bench.train import InjectedFault, run_trial
from tiny import experiment


def tiny(**sections):
    return config_module.from_dict(experiment(**sections))


def without_timings(result):
    return {k: v for k, v in result.items() if not k.endswith("_s") and k not in ("peak_mem_mb", "samples_per_s")}


def test_same_seed_on_cpu_gives_identical_metrics():
    first, second = run_trial(tiny()), run_trial(tiny())
    assert without_timings(first) == without_timings(second)
    assert without_timings(run_trial(tiny(train={"seed": 1}))) != without_timings(first)


def test_result_has_the_design_keys_and_a_consistent_generalization_gap():
    sgd = run_trial(tiny())
    result = run_trial(tiny(optimizer={"name": "hero", "radius": 0.1, "hessian_coef": 1.0, "hvp": "fd"}))
    for key in ("train_loss", "train_acc", "val_acc", "test_acc", "gen_gap", "time_per_epoch_s", "grad_evals",
                "samples_per_s", "peak_mem_mb", "label_noise_realized", "epochs_done"):
        assert key in result, key
    assert result["gen_gap"] == pytest.approx(result["train_acc_clean"] - result["test_acc"])
    assert result["epochs_done"] == 2 and result["status"] == "completed"
    assert result["grad_evals"] == 3 * sgd["grad_evals"] > 0  # HERO-fd: g(W), g(W+z), g(W+z+eps*v)


def test_report_is_called_each_epoch_with_checkpoints_every_checkpoint_every():
    # run_trial offers a snapshot every epoch; the sweep's trainable saves it when checkpoint_due
    from hero_bench.sweep.trainable import checkpoint_due

    calls = []
    run_trial(tiny(train={"epochs": 3}), report=lambda m, s: calls.append((m["epoch"], s is not None and checkpoint_due(m["epoch"], 2, 3))))
    assert calls == [(1, False), (2, True), (3, True)]


def test_resuming_from_a_checkpoint_reproduces_the_uninterrupted_run():
    states = {}
    full = run_trial(tiny(train={"epochs": 3}), report=lambda m, s: states.setdefault(m["epoch"], s))
    resumed = run_trial(tiny(train={"epochs": 3}), resume=states[1])
    assert resumed["test_acc"] == full["test_acc"] and resumed["train_loss"] == full["train_loss"]
    assert resumed["epochs_done"] == 3


def test_injected_fault_fires_on_a_fresh_start_only():
    states = {}
    with pytest.raises(InjectedFault):
        run_trial(tiny(train={"epochs": 3, "fail_at_epoch": 2}), report=lambda m, s: states.setdefault(m["epoch"], s))
    assert run_trial(tiny(train={"epochs": 3, "fail_at_epoch": 2}), resume=states[1])["status"] == "completed"


def test_a_diverging_trial_is_recorded_not_raised():
    result = run_trial(tiny(train={"lr": 1e6}, optimizer={"name": "sgd"}))
    assert result["status"] == "diverged" and result["diverged_epoch"] == 1


def test_learning_rate_follows_the_cosine_schedule():
    lrs = []
    run_trial(tiny(train={"epochs": 4, "lr": 0.1}), report=lambda m, s: lrs.append(m["lr"]))
    expected = [0.05 * (1 + math.cos(math.pi * e / 4)) for e in range(1, 5)]
    assert lrs == pytest.approx(expected)


def test_cuda_requested_without_a_device_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ConfigError, match="train.device is 'cuda' but no CUDA device"):
        run_trial(tiny(train={"device": "cuda"}))


def test_bf16_autocast_trains_on_cpu():
    result = run_trial(tiny(train={"precision": "bf16", "epochs": 1}))
    assert result["status"] == "completed" and math.isfinite(result["train_loss"])


def test_quickstart_config_is_valid():
    assert isinstance(config_module.load("experiments/quickstart.yaml"), Config)
