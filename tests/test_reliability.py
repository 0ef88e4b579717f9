"""Faults a sweep must survive, done for real: a diverging trial, a killed trial worker, a killed sweep
driver, a results folder that cannot be written, W&B failing; plus safety (checkpoints never run
pickled code, the W&B key never leaks), determinism across sweeps, and a 200-trial soak.

Every Ray started here is shut down, even when a test fails: the in-process one by the `local_ray`
fixture, the ones of `hero-bench` subprocesses by killing, by pid, the processes each started.
"""
import errno
import os
import pickle
import secrets
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import ray  # noqa: F401 - first: Ray puts the psutil it bundles on sys.path
import pandas as pd
import psutil
import pytest
import torch
import wandb
import yaml
from ray import tune

from hero_bench import atomic, cli, config as config_module, sweep
from hero_bench.results import outputs
from hero_bench.sweep import session, trainable, tracking
from hero_bench.errors import ConfigError
from hero_bench.train import FAIL_AT_EPOCH, run_trial
from processes import free_port, hero_bench_process, kill_all, wait_for
from tiny import experiment
from wandb_records import read_runs

TIMING_COLUMNS = ["time_per_epoch_s", "samples_per_s", "peak_mem_mb", "train_time_s", "eval_time_s", "cpu_time_s"]


def write_experiment(folder, **sections):
    path = Path(folder) / "exp.yaml"
    path.write_text(yaml.safe_dump(experiment(**sections)))
    return path


def same_rows(before, after):
    """Rows of `before` (by trial_id) appear unchanged in `after`: same columns, same values, NaN == NaN."""
    old = before.set_index("trial_id").sort_index()
    new = after.set_index("trial_id").loc[old.index, old.columns]
    pd.testing.assert_frame_equal(old, new, check_dtype=False, check_exact=True)


def rows_in(path):
    try:
        return len(pd.read_csv(path))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


# ------------------------------------------------------------------------------------ no Ray needed

def test_a_trial_resumed_from_its_last_checkpoint_reports_its_final_metrics_again():
    config = config_module.from_dict(experiment())
    states = {}
    full = run_trial(config, report=lambda m, s: states.setdefault(m["epoch"], s))
    reports = []
    again = run_trial(config, report=lambda m, s: reports.append(m), resume=states[2])
    # nothing is retrained, so even the timings are the recorded ones
    assert len(reports) == 1 and reports[0] == again
    assert {k: v for k, v in again.items() if k != "resumed_from_epoch"} == {k: v for k, v in full.items() if k != "resumed_from_epoch"}
    assert again["resumed_from_epoch"] == 2


class RunsCode:
    """Unpickling this runs a shell command: what a malicious checkpoint would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_checkpoints_load_tensors_and_data_but_never_run_pickled_code(tmp_path):
    states = []
    run_trial(config_module.from_dict(experiment(train={"epochs": 1})), report=lambda m, s: states.append(s))
    (tmp_path / "good").mkdir()
    torch.save(states[0], tmp_path / "good" / trainable.STATE_FILE)
    loaded = trainable.load_state(tmp_path / "good")
    assert loaded["result"] == states[0]["result"] and loaded["history"] == states[0]["history"]
    assert all(torch.equal(loaded["model"][k], v) for k, v in states[0]["model"].items())

    marker = tmp_path / "code-ran"
    (tmp_path / "evil").mkdir()
    torch.save({"epoch": 1, "model": RunsCode(marker)}, tmp_path / "evil" / trainable.STATE_FILE)
    with pytest.raises(trainable.UnsafeCheckpointError) as info:
        trainable.load_state(tmp_path / "evil")
    assert str(info.value).startswith(f"checkpoint {tmp_path / 'evil' / trainable.STATE_FILE} holds more than tensors and plain data")
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):  # what torch alone says
        torch.load(tmp_path / "evil" / trainable.STATE_FILE, weights_only=True)
    assert not marker.exists()


@pytest.mark.parametrize("step, code", [("write", errno.ENOSPC), ("rename", errno.EACCES)], ids=["disk-full", "permission-denied"])
def test_a_failed_trials_csv_write_is_a_clear_error_and_keeps_the_previous_file(tmp_path, monkeypatch, step, code):
    path = tmp_path / "trials.csv"
    path.write_text("trial_id,status\na,completed\n")

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    if step == "write":
        monkeypatch.setattr(atomic.os, "fdopen", fail)
    else:
        monkeypatch.setattr(atomic.os, "replace", fail)
    with pytest.raises(ConfigError) as info:
        atomic.write_atomic(path, pd.DataFrame({"trial_id": ["a", "b"], "status": ["completed"] * 2}).to_csv(index=False))
    assert str(info.value) == f"cannot write {path}: {os.strerror(code)}; the previous file is unchanged"
    assert path.read_text() == "trial_id,status\na,completed\n"
    assert [p.name for p in tmp_path.iterdir()] == ["trials.csv"]  # no temp file left behind


def test_a_dying_wandb_process_turns_tracking_off_with_a_warning(tmp_path, fresh_wandb):
    config = config_module.from_dict(experiment(tracking={"wandb": "offline"}))
    callback = tracking.WandbTrials(config, tmp_path / "results" / config.name)
    trial = SimpleNamespace(trial_id="t1", config={"train.lr": 0.05}, last_result={"epoch": 1, "val_acc": 50.0})
    callback.on_trial_start(0, [trial], trial)
    callback.wait()  # the W&B calls run on the callback's own thread
    assert "t1" in callback.runs
    services = [p for p in psutil.Process().children(recursive=True) if p.name().startswith("wandb")]
    assert services, "wandb runs its own service process"
    kill_all(services)
    with pytest.warns(UserWarning, match=r"W&B log failed \(.*\); tracking is off for the rest of this sweep, results continue"):
        callback.on_trial_result(1, [trial], trial, {"epoch": 1, "val_acc": 50.0})
        callback.wait()
    callback.on_trial_complete(1, [trial], trial)  # tracking is off: no second failure, no exception
    callback.finish_sweep(tmp_path / "results" / config.name)
    assert not callback.enabled


def test_a_wandb_failure_in_one_run_costs_that_run_and_tracking_goes_on(tmp_path, fresh_wandb):
    config = config_module.from_dict(experiment(tracking={"wandb": "offline"}))
    callback = tracking.WandbTrials(config, tmp_path / "results" / config.name)
    broken, sound = (SimpleNamespace(trial_id=t, config={"train.lr": lr}, last_result={"epoch": 2, "val_acc": 50.0})
                     for t, lr in (("t1", 0.05), ("t2", 0.03)))
    for trial in (broken, sound):
        callback.on_trial_start(0, [], trial)
    callback.wait()  # the W&B calls run on the callback's own thread

    def refuse(*args, **kwargs):
        raise ValueError("a value W&B cannot take")

    callback.runs["t1"].log = refuse
    with pytest.warns(UserWarning, match=r"W&B log failed \(ValueError: .*\); the run of trial t1 ends here; "
                                         r"the other runs and results continue"):
        callback.on_trial_result(1, [], broken, {"epoch": 1, "val_acc": 40.0})
        callback.wait()
    for epoch in (1, 2):
        callback.on_trial_result(epoch, [], sound, {"epoch": epoch, "val_acc": 40.0 + epoch})
    for trial in (broken, sound):
        callback.on_trial_complete(2, [], trial)
    callback.wait()
    assert callback.enabled
    wandb.teardown()  # the service writes out every run it holds
    runs = read_runs(tmp_path / "results" / config.name / "wandb" / "wandb")
    (t1,), (t2,) = runs[f"{config.name}-t1"], runs[f"{config.name}-t2"]
    assert t1["history"] == [] and t1["exit_code"] == 1
    assert [(h["epoch"], h["val_acc"]) for h in t2["history"]] == [(1, 41.0), (2, 42.0)] and t2["exit_code"] == 0
    assert t2["summary"]["status"] == "completed"


def test_a_slow_wandb_call_holds_up_neither_the_driver_nor_the_order_of_a_runs_records(tmp_path, fresh_wandb,
                                                                                       monkeypatch):
    config = config_module.from_dict(experiment(tracking={"wandb": "offline"}))
    results = tmp_path / "results" / config.name
    callback = tracking.WandbTrials(config, results)
    start_trial = tracking.tracking.start_trial

    def slow_start(*args, **kwargs):  # a W&B server that takes its time
        time.sleep(2.0)
        return start_trial(*args, **kwargs)

    monkeypatch.setattr(tracking.tracking, "start_trial", slow_start)
    trial = SimpleNamespace(trial_id="t1", config={"train.lr": 0.05}, last_result={"epoch": 2, "val_acc": 42.0})
    started = time.perf_counter()
    callback.on_trial_start(0, [], trial)
    for epoch in (1, 2):
        callback.on_trial_result(epoch, [], trial, {"epoch": epoch, "val_acc": 40.0 + epoch})
    callback.on_trial_complete(2, [], trial)
    assert time.perf_counter() - started < 1.0, "the driver waited for W&B"
    callback.wait()
    wandb.teardown()
    (run,) = read_runs(results / "wandb" / "wandb")[f"{config.name}-t1"]
    assert [(h["epoch"], h["val_acc"]) for h in run["history"]] == [(1, 41.0), (2, 42.0)]
    assert run["exit_code"] == 0 and run["summary"]["status"] == "completed"
    (folder,) = (results / "wandb" / "wandb").glob("offline-run-*")
    assert not (folder / "files" / "requirements.txt").exists(), "a trial run lists the installed packages"


# ------------------------------------------------------------------------- `hero-bench` processes

@pytest.mark.slow
def test_a_killed_sweep_driver_resumes_without_rerunning_or_duplicating_trials(tmp_path):
    lrs = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]
    write_experiment(
        tmp_path,
        data={"args": {"num_samples": 2048, "input_shape": [1, 4, 4], "num_classes": 3}},
        train={"epochs": 3, "batch_size": 16},
        sweep={"space": {"train.lr": lrs}, "max_concurrent_trials": 1},
    )
    args = ["sweep", "exp.yaml", "--results", "results", "--storage", "ray"]
    trials_csv = tmp_path / "results" / "rel" / "trials.csv"
    with hero_bench_process(args, tmp_path) as (proc, collect, tree):
        assert wait_for(lambda: rows_in(trials_csv) >= 2, proc, collect, timeout=300), (tmp_path / "hero-bench-0.log").read_text()[-3000:]
        collect()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(2)
        # what the dead driver left running (Ray's agents outlive it by minutes) and on disk
        orphans = [p for p in tree.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        dead = list(session.root().glob(f"{proc.pid}-*"))
        assert len(dead) == 1 and list(dead[0].glob("session_*")), "its Ray session lived in its own folder"
        before = pd.read_csv(trials_csv, dtype={"trial_id": str})
        assert 2 <= len(before) < len(lrs), "the driver was killed mid-sweep"
        assert (trials_csv.parent / "sweep.lock").exists()  # left behind, stale: --resume takes it over

        with hero_bench_process([*args, "--resume"], tmp_path) as (again, collect_again, tree_again):
            assert wait_for(lambda: again.poll() is not None, again, collect_again, timeout=300)
            assert again.returncode == 0, (tmp_path / "hero-bench-1.log").read_text()[-3000:]
            # the resume stopped what the dead one left and removed its folder; it shut its own Ray down on the way out
            assert psutil.wait_procs(orphans, timeout=1)[1] == [] and not dead[0].exists()
            assert psutil.wait_procs(list(tree_again.values()), timeout=30)[1] == []
            assert not list(session.root().glob(f"{again.pid}-*")), "a sweep that ends leaves no Ray session behind"
    after = pd.read_csv(trials_csv, dtype={"trial_id": str})
    assert after["trial_id"].is_unique and sorted(after["train.lr"]) == lrs
    assert set(after["status"]) == {"completed"} and set(after["epochs_done"]) == {3}
    same_rows(before, after)  # finished trials were not run again: same metrics, same timings
    assert not (trials_csv.parent / "sweep.lock").exists()


@pytest.mark.slow
def test_a_sweep_whose_trials_all_fail_says_so_in_a_line_each_and_resumes(tmp_path):
    """Every trial raises (as a setting only a real trial reveals would) and is retried once: each
    failure is one line naming the trial, its error's last line, what happens next and where its
    traceback is; none is printed; the sweep ends with one line per failing configuration and a
    readable trials.csv of failed rows, and --resume, once the cause is gone, runs them."""
    write_experiment(tmp_path, sweep={"space": {"train.lr": [0.01, 0.02]}, "max_failures": 1})
    args = ["sweep", "exp.yaml", "--storage", "ray"]
    with hero_bench_process(args, tmp_path, {**os.environ, FAIL_AT_EPOCH: "1"}) as (proc, collect, _):
        assert wait_for(lambda: proc.poll() is not None, proc, collect, timeout=400)
    log = (tmp_path / "hero-bench-0.log").read_text()
    results = tmp_path / "results" / "rel"
    assert proc.returncode == 1, log[-3000:]
    assert "Traceback" not in log and "File \"" not in log, log[-3000:]
    error = "hero_bench.train.InjectedFault: injected fault at epoch 1 (HERO_BENCH_FAIL_AT_EPOCH)"
    retried = [line for line in log.splitlines() if " retrying " in line]
    failed = [line for line in log.splitlines() if "] failed " in line]
    assert len(retried) == len(failed) == 2, log[-3000:]
    assert all(f": {error}; tried again from its last checkpoint (retry 1 of 1); traceback in {results / 'errors.log'}" in line
               for line in retried)
    assert all(line.endswith(f": {error}; traceback in {results / 'errors.log'}") for line in failed)
    assert [line for line in log.splitlines() if line.startswith(("failed: ", "tracebacks: "))] == [
        f"failed: train.lr={lr} (1 trial, train.seed 0): {error}" for lr in (0.01, 0.02)] + [
        f"tracebacks: {results / 'errors.log'}; the same command with --resume runs the failed trials again"]
    assert (results / "errors.log").read_text().count(f"{error}\n") == 4  # 2 trials, each tried twice
    table = pd.read_csv(results / "trials.csv", dtype={"trial_id": str})
    assert list(table["status"]) == ["failed", "failed"] and set(table["error"]) == {error}

    with hero_bench_process([*args, "--resume"], tmp_path) as (proc, collect, _):
        assert wait_for(lambda: proc.poll() is not None, proc, collect, timeout=400)
        assert proc.returncode == 0, (tmp_path / "hero-bench-1.log").read_text()[-3000:]
    after = pd.read_csv(results / "trials.csv", dtype={"trial_id": str})
    assert sorted(after["trial_id"]) == sorted(table["trial_id"]) and set(after["status"]) == {"completed"}


# ----------------------------------------------------------------------- sweeps in this process

def test_a_results_folder_that_cannot_be_created_is_a_clear_error(local_ray, tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results folder should be\n")
    with pytest.raises(ConfigError, match=r"cannot write to .*results/rel: Not a directory; choose another parent folder with --results"):
        sweep.run(config_module.from_dict(experiment()), results_root=blocker, storage=str(tmp_path / "ray"))
    assert blocker.read_text() == "a file where the results folder should be\n"


@pytest.fixture(scope="module")
def divergence_sweeps(local_ray, tmp_path_factory):
    """The same grid, one point of which (the largest lr allowed) diverges in its second epoch, swept twice
    into two folders."""
    config = config_module.from_dict(experiment(sweep={"space": {"train.lr": [0.05, 1000.0]}, "seeds": [0, 1]}))
    folders = []
    for _ in range(2):
        root = tmp_path_factory.mktemp("divergence")
        sweep.run(config, results_root=root / "results", storage=str(root / "ray"))
        folders.append(root / "results" / "rel")
    return folders


def test_a_diverging_grid_point_is_recorded_and_never_ranked_best(divergence_sweeps):
    folder = divergence_sweeps[0]
    trials = pd.read_csv(folder / "trials.csv")
    assert len(trials) == 4
    diverged, fine = trials[trials["train.lr"] == 1000], trials[trials["train.lr"] == 0.05]
    assert set(diverged["status"]) == {"diverged"} and set(diverged["diverged_epoch"]) == {2}
    assert set(fine["status"]) == {"completed"} and set(fine["epochs_done"]) == {2}  # the sweep went on

    outputs.write(folder)
    board = pd.read_csv(folder / "leaderboard.csv")
    chosen = board[board["status"] == "completed"]
    assert chosen["train.lr"].tolist() == [0.05] and chosen["best_test_acc"].all()
    listed = board[board["status"] == "diverged"]
    assert listed["train.lr"].tolist() == [1000] and not listed["best_test_acc"].any()
    assert "diverged (epoch 2)" in (folder / "leaderboard.md").read_text()


def test_the_same_sweep_twice_gives_identical_trials_apart_from_timings(divergence_sweeps):
    def comparable(folder):
        trials = pd.read_csv(folder / "trials.csv").drop(columns=["trial_id", *TIMING_COLUMNS])
        return trials.sort_values(["train.lr", "train.seed"]).reset_index(drop=True)

    first, second = (comparable(folder) for folder in divergence_sweeps)
    pd.testing.assert_frame_equal(first, second, check_exact=True)
    completed = first[first["status"] == "completed"]
    assert completed["test_acc"].notna().all() and completed["train_loss"].nunique() == 2  # the seeds differ


class KillWorkerOnce(tune.Callback):
    """In the sweep driver: SIGKILLs the worker process of the trial once Ray has registered the
    checkpoint of `epoch` (the worker's pid is in every Ray result). The worker is then waiting for
    Ray to ask for its next epoch, so it dies mid-training, before it trains another one."""

    def __init__(self, epoch):
        self.epoch, self.killed, self.seen = epoch, None, []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.seen.append((result["epoch"], result["pid"]))

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        if self.killed is None and trial.last_result["epoch"] == self.epoch:
            self.killed = psutil.Process(trial.last_result["pid"])
            self.killed.send_signal(signal.SIGKILL)


def test_a_killed_trial_worker_is_retried_from_its_last_checkpoint(local_ray, tmp_path, capfd):
    config = config_module.from_dict(experiment(train={"epochs": 3}, sweep={"max_failures": 1, "checkpoint_every": 1}))
    killer = KillWorkerOnce(epoch=1)
    frame = sweep.run(config, results_root=tmp_path / "results", storage=str(tmp_path / "ray"), callbacks=[killer])
    assert killer.killed is not None and not killer.killed.is_running()
    printed = "".join(capfd.readouterr())  # the retry in one line of hero-bench's, its traceback in errors.log only
    retries = [line for line in printed.splitlines() if " retrying " in line]
    assert "Traceback" not in printed and len(retries) == 1 and "The actor is dead because its worker process has died" in retries[0]
    assert "(retry 1 of 1); traceback in " in retries[0] and (tmp_path / "results" / "rel" / "errors.log").exists()
    # after the kill, a new worker continued from epoch 1's checkpoint: epochs 2 and 3 only
    assert [(epoch, pid != killer.killed.pid) for epoch, pid in killer.seen] == [(1, False), (2, True), (3, True)]
    row = frame.iloc[0]
    assert row["status"] == "completed" and row["epochs_done"] == 3 and row["resumed_from_epoch"] == 1
    uninterrupted = run_trial(config_module.for_trial(config, {"train.seed": 0}))
    assert row["test_acc"] == uninterrupted["test_acc"] and row["train_loss"] == uninterrupted["train_loss"]


def test_a_full_disk_mid_sweep_keeps_trials_csv_and_resume_completes_it(local_ray, tmp_path, monkeypatch):
    config = config_module.from_dict(experiment(sweep={"space": {"train.lr": [0.03, 0.05, 0.07]}, "max_concurrent_trials": 1}))
    trials_csv = tmp_path / "results" / "rel" / "trials.csv"
    temp_file = atomic.temp_file

    def disk_full_once_the_file_exists(path):
        if path == trials_csv and trials_csv.exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return temp_file(path)

    monkeypatch.setattr(atomic, "temp_file", disk_full_once_the_file_exists)
    run = dict(results_root=tmp_path / "results", storage=str(tmp_path / "ray"))
    with pytest.warns(UserWarning, match="No space left on device; the previous file is unchanged; trying again"):
        with pytest.raises(ConfigError, match=rf"cannot write {trials_csv}: No space left on device; the previous file is unchanged"):
            sweep.run(config, **run)
    before = pd.read_csv(trials_csv, dtype={"trial_id": str, "config_hash": str})
    assert len(before) == 1 and before["status"].item() == "completed"
    assert sorted(p.name for p in trials_csv.parent.iterdir()) == ["history.csv", "hypotheses.json", "sweep.json", "trials.csv"]

    monkeypatch.undo()  # space is freed; --resume writes the table without training anything again
    after = sweep.run(config, resume=True, **run)
    written = pd.read_csv(trials_csv, dtype={"trial_id": str, "config_hash": str})  # a hash of digits and one e is text
    assert len(after) == len(written) == 3 and set(written["status"]) == {"completed"}
    same_rows(before, written)


def test_wandb_online_without_network_warns_once_and_the_sweep_completes(local_ray, tmp_path, monkeypatch, fresh_wandb):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("WANDB_API_KEY", secrets.token_hex(20))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setattr("hero_bench.tracking.INIT_TIMEOUT_S", 3)
    write_experiment(tmp_path, sweep={"space": {"train.lr": [0.03, 0.05]}})
    with pytest.warns(UserWarning) as caught:
        assert cli.main(["sweep", "exp.yaml", "--wandb", "online", "--storage", "ray"]) == 0
    failures = [str(w.message) for w in caught if "W&B" in str(w.message)]
    assert len(failures) == 1 and "W&B run start failed" in failures[0] and "results continue" in failures[0]
    trials = pd.read_csv(tmp_path / "results" / "rel" / "trials.csv")
    assert len(trials) == 2 and set(trials["status"]) == {"completed"}
    assert (tmp_path / "results" / "rel" / "leaderboard.md").exists()


def test_the_wandb_api_key_is_never_printed_logged_or_written(local_ray, tmp_path, monkeypatch, capfd, fresh_wandb):
    key = secrets.token_hex(20)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_API_KEY", key)
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / variable.lower()))
    write_experiment(tmp_path, sweep={"space": {"train.lr": [0.03, 0.05]}})
    assert cli.main(["sweep", "exp.yaml", "--wandb", "offline", "--storage", "ray"]) == 0
    out, err = capfd.readouterr()
    runs = list((tmp_path / "results" / "rel" / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 3, "one W&B run per trial and a summary run were written"
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 20
    assert [p for p in files if key.encode() in p.read_bytes()] == []
    assert key not in out and key not in err


def test_a_soak_sweep_of_200_tiny_trials_records_every_trial(local_ray, tmp_path, capsys):
    seeds = list(range(200))
    config = config_module.from_dict(experiment(
        data={"args": {"num_samples": 64, "input_shape": [1, 2, 2], "num_classes": 2}},
        model={"args": {"hidden": [4]}},
        train={"epochs": 1, "batch_size": 64},
        sweep={"seeds": seeds},
    ))
    started = time.perf_counter()
    frame = sweep.run(config, results_root=tmp_path / "results", storage=str(tmp_path / "ray"))
    seconds = time.perf_counter() - started
    written = pd.read_csv(tmp_path / "results" / "rel" / "trials.csv")
    assert len(frame) == len(written) == 200 and written["trial_id"].is_unique
    assert sorted(written["train.seed"]) == seeds and set(written["status"]) == {"completed"}
    with capsys.disabled():
        print(f"\nsoak: 200 trials in {seconds:.0f} s")
