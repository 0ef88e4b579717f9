"""W&B tracking of a sweep run as a real `hero-bench` process (stdout into a file, as on a cluster's
head node), in which every trial fails once and Ray retries it from its last checkpoint: each trial
keeps one W&B run whose history holds every epoch exactly once, tracking goes on for the trials
after the failure, the summary run is written, and no run captures the driver's console.

The offline runs are read back from their `.wandb` files (wandb_records) and compared with trials.csv.

Fault injection: HERO_BENCH_FAIL_AT_EPOCH in the sweep's environment makes a trial raise once, at the
start of that epoch of a fresh start. With 4 epochs and a checkpoint every 2, a trial reports epochs 1, 2 (checkpoint), 3, fails at
4, and its retry resumes from epoch 2 (trials.csv: resumed_from_epoch): it reports epoch 3 again, then 4.
(`report_every_s: 0`: each epoch is reported as it ends, so epoch 3 reaches the driver before the
failure; batched, it would wait for epoch 4's report and only the retry would report it.)
"""
import json
import os

import pandas as pd
import pytest
import yaml

from hero_bench.train import FAIL_AT_EPOCH
from processes import hero_bench_process, wait_for
from tiny import experiment
from wandb_records import read_runs

EXPERIMENT = experiment(
    name="retried", train={"epochs": 4}, tracking={"wandb": "offline"},
    sweep={"space": {"train.lr": [0.03, 0.05]}, "seeds": [0], "max_failures": 1, "checkpoint_every": 2,
           "report_every_s": 0, "max_concurrent_trials": 1},  # one at a time: the second trial starts after the first failed
)


@pytest.fixture(scope="module")
def retried(tmp_path_factory):
    """(what the driver printed, trials.csv, the offline runs by id) of the sweep."""
    folder = tmp_path_factory.mktemp("retried")
    (folder / "exp.yaml").write_text(yaml.safe_dump(EXPERIMENT))
    env = {**os.environ, "WANDB_DATA_DIR": str(folder / "wandb-data"), FAIL_AT_EPOCH: "4"}
    args = ["sweep", "exp.yaml", "--results", "results", "--storage", "ray"]
    with hero_bench_process(args, folder, env=env) as (proc, collect, _):
        assert wait_for(lambda: proc.poll() is not None, proc, collect, timeout=600)
    printed = (folder / "hero-bench-0.log").read_text()
    assert proc.returncode == 0, printed
    results = folder / "results" / "retried"
    trials = pd.read_csv(results / "trials.csv", dtype={"trial_id": str})
    return printed, trials, read_runs(results / "wandb" / "wandb")


@pytest.mark.slow
def test_a_retried_trial_continues_its_own_run_with_every_epoch_logged_once(retried):
    _, trials, runs = retried
    assert set(trials["status"]) == {"completed"} and set(trials["resumed_from_epoch"]) == {2}
    for row in trials.to_dict("records"):
        first, retry = runs[f"retried-{row['trial_id']}"]  # the run of each attempt, in the order they started
        assert [h["epoch"] for h in first["history"]] == [1, 2, 3] and first["exit_code"] == 1
        assert [h["epoch"] for h in retry["history"]] == [4] and retry["exit_code"] == 0  # not epoch 3 again
        assert [h["_step"] for h in first["history"] + retry["history"]] == [1, 2, 3, 4]
        assert retry["history"][-1]["val_acc"] == pytest.approx(row["val_acc"])
        assert retry["summary"]["status"] == "completed"
        assert retry["summary"]["test_acc"] == pytest.approx(row["test_acc"])
        assert retry["config"] == first["config"]


@pytest.mark.slow
def test_tracking_stays_on_after_a_retry_and_the_summary_run_is_written(retried):
    printed, trials, runs = retried
    assert sorted(runs) == sorted([f"retried-{t}" for t in trials["trial_id"]] + ["retried-summary"])
    (summary,) = runs["retried-summary"]
    assert summary["summary"]["leaderboard"]["_type"] == "table-file"
    assert not [line for line in printed.splitlines() if "W&B" in line and "failed" in line]  # no W&B warning


@pytest.mark.slow
def test_no_run_captures_the_drivers_console(retried):
    printed, trials, runs = retried
    progress = [line for line in printed.splitlines() if line.startswith("[") and " completed " in line]
    assert len(progress) == len(trials)  # the driver printed its lines...
    for run_id, attempts in runs.items():  # ...and no run holds them
        assert all(attempt["output"] == [] for attempt in attempts), run_id
