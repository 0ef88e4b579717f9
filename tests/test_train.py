import math

import pytest
import torch

from hero_bench import config as config_module
from hero_bench.config import Config
from hero_bench.errors import ConfigError
from hero_bench import data, methods
from hero_bench.train import FAIL_AT_EPOCH, InjectedFault, epoch_summary, final_metrics, run_trial
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


def test_injected_fault_fires_on_a_fresh_start_only(monkeypatch):
    monkeypatch.setenv(FAIL_AT_EPOCH, "2")
    states = {}
    with pytest.raises(InjectedFault, match="at epoch 2"):
        run_trial(tiny(train={"epochs": 3}), report=lambda m, s: states.setdefault(m["epoch"], s))
    assert run_trial(tiny(train={"epochs": 3}), resume=states[1])["status"] == "completed"


def test_a_diverging_trial_is_recorded_not_raised():
    result = run_trial(tiny(train={"lr": 1000, "epochs": 3}, optimizer={"name": "sgd"}))  # the largest lr allowed
    assert result["status"] == "diverged" and result["diverged_epoch"] == 2 and result["epochs_done"] == 1


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


# ---------------------------------------------------------------- per-epoch test accuracy, noise, warm-up, cost


def test_epoch_summary_of_a_hand_made_history():
    history = [{"val_acc": 80.0, "test_acc": 70.0}, {"val_acc": 85.0, "test_acc": 72.0},
               {"val_acc": 85.0, "test_acc": 90.0}, {"val_acc": 84.0, "test_acc": 75.0}]
    # the first epoch of the best validation accuracy (a tie goes to the earlier one)
    assert epoch_summary(history) == {"best_val_epoch": 2, "test_acc_at_best_val": 72.0, "max_test_acc": 90.0}


def test_final_metrics_of_a_hand_made_model_and_dataset():
    # logits = x @ W.T with W the identity: the prediction is the argmax of x, so every accuracy is countable
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 3, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(3))
    x = torch.eye(3).repeat(4, 1).view(12, 1, 3)  # predictions 0, 1, 2, 0, 1, 2, ...
    clean = torch.arange(12) % 3
    noisy = clean.clone()
    noisy[:3] = (noisy[:3] + 1) % 3  # 3 of 12 training labels wrong
    test_y = clean.clone()
    test_y[:6] = (test_y[:6] + 1) % 3  # half the test labels disagree with the model
    dataset = data.Dataset("hand", 3, (1, 3), x, noisy, clean, x, clean, x, test_y, (0.0,), (1.0,))
    config = tiny(evaluate={"ptq_bits": [8], "hessian": {"top_eigenvalue": False, "trace": False}})
    optimizer = methods.create("sgd", model)
    history = [{"seconds": 1.0, "cpu_s": 0.5, "val_acc": 90.0, "test_acc": 40.0},
               {"seconds": 3.0, "cpu_s": 1.5, "val_acc": 95.0, "test_acc": 50.0}]
    out = final_metrics(model, optimizer, dataset, config, history, torch.device("cpu"))
    assert (out["train_acc_clean"], out["train_acc_noisy"]) == (100.0, 75.0)
    assert out["gen_gap"] == 100.0 - 50.0  # against the last epoch's test accuracy
    assert (out["best_val_epoch"], out["test_acc_at_best_val"], out["max_test_acc"]) == (2, 50.0, 50.0)
    assert out["ptq_drop_8bit"] == 0.0  # the identity is exact at 8 bits
    assert (out["time_per_epoch_s"], out["train_time_s"]) == (2.0, 4.0) and out["cpu_time_s"] >= 2.0


def test_a_trial_reports_test_accuracy_every_epoch_and_its_early_stopping_numbers():
    reports = []
    result = run_trial(tiny(train={"epochs": 4}, data={"label_noise": 0.5}), report=lambda m, s: reports.append(m))
    history = [{"val_acc": r["val_acc"], "test_acc": r["test_acc"]} for r in reports]
    assert result["test_acc"] == reports[-1]["test_acc"]
    assert {k: result[k] for k in ("best_val_epoch", "test_acc_at_best_val", "max_test_acc")} == epoch_summary(history)
    assert result["train_acc_noisy"] != result["train_acc_clean"]  # half the labels trained on are wrong


def test_hessian_warmup_makes_hero_sam_for_its_first_epochs_and_hero_after():
    def weights_per_epoch(**optimizer):
        states = {}
        run_trial(tiny(train={"epochs": 2}, optimizer={"radius": 0.2, "hessian_coef": 20.0, "hvp": "exact", **optimizer}),
                  report=lambda m, s: states.setdefault(m["epoch"], s["model"]))
        return states

    sam = weights_per_epoch(name="sam")
    warm = weights_per_epoch(name="hero", hessian_warmup_epochs=1)
    hero = weights_per_epoch(name="hero")

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    assert same(warm[1], sam[1]) and not same(hero[1], sam[1])  # epoch 1: the term is off
    assert not same(warm[2], sam[2])  # epoch 2: it is on


def test_hero_and_sam_at_radius_zero_cost_exactly_what_sgd_costs():
    sgd = run_trial(tiny())
    for name in ("hero", "sam"):
        result = run_trial(tiny(optimizer={"name": name, "radius": 0.0, "hessian_coef": 5.0}))
        assert (result["grad_evals"], result["hvp_evals"]) == (sgd["grad_evals"], 0)
        assert result["test_acc"] == sgd["test_acc"] and result["train_loss"] == sgd["train_loss"]


def test_auto_never_falls_back_to_exact_on_mnist1d_cnn(tmp_path):
    result = run_trial(tiny(data={"name": "mnist1d", "root": str(tmp_path), "args": {"num_samples": 1000}},
                            model={"name": "mnist1d_cnn", "args": {}}, train={"epochs": 3, "batch_size": 50},
                            optimizer={"name": "hero", "hessian_coef": 100.0, "hvp": "auto", "hvp_check_every": 3}))
    # 15 steps an epoch, a check every 3rd: 15 checks of fd against exact, every one above 0.99
    assert result["status"] == "completed" and result["hvp_evals"] == 15
    assert result["hvp_fallback_step"] is None


def test_compute_factor_trains_that_many_times_the_epochs_on_one_schedule():
    lrs = []
    once = run_trial(tiny(train={"epochs": 2}))
    twice = run_trial(tiny(train={"epochs": 2, "compute_factor": 2, "lr": 0.1}), report=lambda m, s: lrs.append(m["lr"]))
    assert twice["epochs_done"] == 4 and twice["grad_evals"] == 2 * once["grad_evals"]
    assert lrs == pytest.approx([0.05 * (1 + math.cos(math.pi * e / 4)) for e in range(1, 5)])  # one cosine over 4 epochs
