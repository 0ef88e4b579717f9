"""A sweep's lifecycle loses nothing and runs nothing it should not, each fault caused for real:
Ctrl-C and SIGTERM sent to a real sweep process, --overwrite and its checks, a second sweep started
while one runs, damaged trials tables, a changed experiment on --resume, code planted in Ray's
pickled state and in a checkpoint, and the mode of the files a sweep writes.

Every Ray started here is shut down, even when a test fails: the in-process one by the `local_ray`
fixture, the ones of `hero-bench` subprocesses by killing, by pid, the processes each started.
"""
import contextlib
import io
import json
import os
import pickle
import re
import shutil
import signal
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import ray  # noqa: F401 - first: Ray puts the psutil it bundles on sys.path
import pandas as pd
import psutil
import pytest
import torch
import yaml

from hero_bench import atomic, cli, config as config_module, sweep, trials
from hero_bench.errors import ConfigError
from hero_bench.results import leaderboard
from hero_bench.sweep import folder, resume, runner, session, trainable
from hero_bench.sweep.space import CONTINUES, TrialConfigs, grid_params, points as sweep_points, search_space, trial_params
from hero_bench.train import run_trial
from processes import hero_bench_process, kill_all, wait_for
from test_reliability import RunsCode, same_rows
from tiny import experiment

FIXTURE = Path(__file__).parent / "fixtures" / "trials_small.csv"
# Trials long enough to be stopped halfway: about 0.1 s an epoch, a checkpoint every 5 epochs.
LONG = dict(data={"args": {"num_samples": 2048, "input_shape": [1, 4, 4], "num_classes": 3}},
            train={"epochs": 40, "batch_size": 32})


def write_experiment(folder, **sections):
    path = Path(folder) / "exp.yaml"
    path.write_text(yaml.safe_dump(experiment(**sections)))
    return path


def checkpointed_trials(storage):
    """The trial folders under a sweep's Ray storage that hold a checkpoint."""
    return {p.parent.parent.name for p in Path(storage).glob(f"rel/*/checkpoint_*/{trainable.TRIAL_FILE}")}


def messages(log):
    """hero-bench's own lines in a process log (Ray's console output is the rest)."""
    return [line for line in Path(log).read_text().splitlines() if line.startswith("hero-bench:")]


def assert_interrupted_output(log, finished, total):
    """An interrupted sweep printed its header, a line per trial that finished and README's one line,
    nothing of Ray's (its advice, its Ctrl-C notice, its result grid's warnings)."""
    lines = Path(log).read_text().splitlines()
    assert lines[0].startswith(f"hero-bench sweep rel: {total} trials") and lines[1].startswith("results: "), lines
    ended = [line for line in lines[2:] if re.match(rf"\[\d/{total}, \d+:\d\d:\d\d, ETA \d+:\d\d:\d\d\] completed ", line)]
    assert len(ended) == finished, lines
    assert [line for line in lines[2:] if line not in ended] == [
        f"hero-bench: interrupted: {finished} of {total} trials finished; run the same command with --resume"]


def read_table(path):
    """trials.csv with every number as written (as trials.parse reads it), or an empty table."""
    if not Path(path).exists():
        return pd.DataFrame(columns=["trial_id", "status"])
    return pd.read_csv(path, dtype={"trial_id": str}, float_precision="round_trip")


def snapshot(root):
    """Every file under `root` with its bytes: what "nothing changed" compares."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def plant_code(experiment_dir, marker):
    """Replace every pickle in Ray's folder of a sweep (tuner.pkl, params.pkl, error.pkl, the search
    state, the pickled trials inside experiment_state-*.json) with one that runs `touch marker`."""
    evil = pickle.dumps(RunsCode(marker))
    planted = 0
    for path in Path(experiment_dir).rglob("*"):
        if path.suffix == ".pkl" or path.name.startswith("basic-variant-state-"):
            path.write_bytes(evil)
            planted += 1
        elif path.name.startswith("experiment_state-"):
            text = path.read_text()
            state = json.loads(text)
            for entry in state["trial_data"]:
                trial = json.loads(entry[0])
                for value in trial.values():
                    if isinstance(value, dict) and value.get("_type") == "CLOUDPICKLE_FALLBACK":
                        value["value"] = evil.hex()
                        planted += 1
                entry[0] = json.dumps(trial)
            path.write_text(json.dumps(state))
    return planted


# ------------------------------------------------------------------ 7. files respect the umask

@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_written_files_get_the_mode_the_umask_gives_any_new_file(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic.write_atomic(tmp_path / "trials.csv", "trial_id,status\n")
        (tmp_path / "plain.csv").write_text("trial_id,status\n")  # made the ordinary way
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "trials.csv").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.csv").stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("link", ["figures", "leaderboard.md", "sweep.lock"])
def test_nothing_is_written_through_a_symbolic_link_in_a_results_folder(tmp_path, capsys, link):
    """A `figures` link to a folder, a `leaderboard.md` link to a file, a `sweep.lock` link: refused
    with one line, and what they point to is untouched (PNGs used to land in the target, over a file
    there; the lock would have truncated its target)."""
    results = tmp_path / "results" / "rel"
    a_sweeps_folder(results)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "heatmap_digits_mlp.png").write_bytes(b"a picture of mine")
    (elsewhere / "notes.md").write_text("my notes\n")
    kept = snapshot(elsewhere)
    if link == "figures":
        shutil.rmtree(results / "figures")
    (results / link).symlink_to(elsewhere if link == "figures" else elsewhere / "notes.md")
    if link == "sweep.lock":
        with pytest.raises(ConfigError, match=rf"^cannot write {results / link}: {results / link} is a symbolic link"):
            folder.Lock(results).acquire()
        assert folder.holder(results) is None
    else:
        assert cli.main(["leaderboard", str(results)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("hero-bench: error: cannot write ")
        assert f": {results / link} is a symbolic link (to {elsewhere if link == 'figures' else elsewhere / 'notes.md'}); " in err[0]
    assert snapshot(elsewhere) == kept


# ------------------------------------------------------------------------ 4. damaged tables

def damage(text, kind):
    """The fixture table damaged in one way, and the trial_id of the row it damaged."""
    lines = text.splitlines(keepends=True)
    if kind == "row-cut-after-status":  # the last write stopped mid-row
        return "".join(lines[:-1]) + lines[-1].split(",")[0] + ",completed", "t24"
    if kind == "file-cut-mid-number":
        return text[: len(text) - len(lines[-1]) // 2], "t24"
    if kind == "garbage-line":
        return "".join(lines[:5] + ["\x00\x13 garbage that is not a row\n"] + lines[5:]), None
    if kind == "ragged-row":
        return "".join(lines[:3] + [lines[3].rstrip("\n") + ",1,2,3\n"] + lines[4:]), lines[3].split(",")[0]
    if kind == "text-in-a-number":
        fields = lines[7].split(",")
        fields[19] = "n/a"  # test_acc
        return "".join(lines[:7] + [",".join(fields)] + lines[8:]), fields[0]
    if kind in ("nul-in-a-field", "escape-in-a-field"):
        fields = lines[4].split(",")
        fields[4] = fields[4][:2] + ("\x00" if kind == "nul-in-a-field" else "\x1b[31m") + fields[4][2:]  # data.name
        return "".join(lines[:4] + [",".join(fields)] + lines[5:]), fields[0]
    if kind == "unknown-status":
        return "".join(lines[:9] + [lines[9].replace(",completed,", ",complet,", 1)] + lines[10:]), lines[9].split(",")[0]
    assert kind == "doubled-row"
    return "".join(lines[:12] + [lines[11]] + lines[12:]), None


@pytest.mark.parametrize("kind", ["row-cut-after-status", "file-cut-mid-number", "garbage-line", "ragged-row",
                                  "text-in-a-number", "nul-in-a-field", "escape-in-a-field", "unknown-status", "doubled-row"])
def test_a_damaged_row_is_skipped_and_counted_never_half_used(tmp_path, kind):
    text, hurt = damage(FIXTURE.read_text(), kind)
    (tmp_path / "trials.csv").write_text(text)
    original = trials.with_added_columns(pd.read_csv(FIXTURE, dtype={"trial_id": str}))
    expected = original[original["trial_id"] != hurt].reset_index(drop=True)
    with pytest.warns(trials.DamagedTableWarning, match=rf"^skipped 1 damaged row\(s\) of {tmp_path / 'trials.csv'} \(line \d+: "):
        kept = trials.read(tmp_path)
    pd.testing.assert_frame_equal(kept, expected, check_dtype=False)
    board = leaderboard.leaderboard(kept, leaderboard.per_config(kept))
    assert set(board["family"]) == set(trials.family(original))  # no family vanished


@pytest.mark.slow
def test_leaderboard_says_on_one_line_how_many_damaged_rows_it_skipped(tmp_path):
    text, _ = damage(FIXTURE.read_text(), "row-cut-after-status")
    (tmp_path / "trials.csv").write_text(text)
    done = subprocess.run([sys.executable, "-m", "hero_bench.cli", "leaderboard", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and (tmp_path / "leaderboard.md").exists()
    columns = len(text.splitlines()[0].split(","))
    assert done.stderr.splitlines() == [
        f"hero-bench: warning: skipped 1 damaged row(s) of {tmp_path / 'trials.csv'} (line 25: 2 fields where the header has "
        f"{columns}); `hero-bench sweep ... --resume` runs their trials again"]


@pytest.mark.parametrize("content, expect", [
    (bytes(range(256)) * 4, "is not a CSV text file (it is not UTF-8)"),
    (b"", "is empty"),
    (b"trial_id,status,data.na", "lacks column(s)"),
    (b"trial_id,status,data.name,model.name,optimizer.name,optimizer.radius,optimizer.hessian_coef,"
     b"data.label_noise,train.seed,val_acc,test_acc\nx,complete\ny\n", "has no valid rows (2 damaged)"),
], ids=["binary", "empty", "header-cut", "every-row-damaged"])
@pytest.mark.parametrize("command", ["leaderboard", "report"])
def test_a_table_that_cannot_be_read_is_refused_with_one_line(tmp_path, capsys, monkeypatch, content, expect, command):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    (tmp_path / "trials.csv").write_bytes(content)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", trials.DamagedTableWarning)
        assert cli.main([command, str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"hero-bench: error: trials table {tmp_path / 'trials.csv'} ") and expect in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trials.csv"]


def test_a_table_of_failed_trials_only_is_readable_and_resume_runs_them_again(tmp_path):
    """Every trial failed: the table has no metric, yet keeps the columns a trials table needs, and
    the error column holds each error's last line without its color codes or control characters."""
    config = config_module.from_dict(experiment(sweep={"space": {"train.lr": [0.03, 0.05]}}))
    configs, space = TrialConfigs(config), search_space(config)
    error = "Traceback (most recent call last):\n  ...\n\x1b[36mRuntimeError\x1b[39m: boom\x00 at\tonce\n"
    rows = {f"a_{i}": trials.row(f"a_{i}", configs.get(p), trial_params(p), {}, error) for i, p in enumerate(grid_params(space))}
    runner.write_rows(tmp_path / "trials.csv", rows)
    frame, damaged = trials.parse(tmp_path)
    assert damaged == [] and list(frame["status"]) == ["failed", "failed"]
    assert list(frame["error"]) == ["RuntimeError: boom  at once"] * 2
    plan = resume.plan(configs, sweep_points(space, 1), tmp_path / "trials.csv", str(tmp_path / "ray" / "rel"), "s1")
    assert plan.rows == [] and sorted(p[CONTINUES] for p in plan.points) == ["a_0", "a_1"]


# --------------------------------------------------------------- 2. the results folder's policy

def sweep_cli(tmp_path, *flags):
    write_experiment(tmp_path)
    return cli.main(["sweep", str(tmp_path / "exp.yaml"), "--storage", str(tmp_path / "ray"), *flags])


@pytest.mark.parametrize("flags", [(), ("--overwrite",)], ids=["plain", "overwrite"])
def test_a_folder_that_is_not_a_sweeps_is_neither_written_into_nor_replaced(tmp_path, capsys, flags):
    (tmp_path / "parent" / "docs").mkdir(parents=True)
    (tmp_path / "parent" / "docs" / "thesis.txt").write_text("three years of work\n")
    before = snapshot(tmp_path / "parent")
    assert sweep_cli(tmp_path, "--results", str(tmp_path / "parent"), "--set", "name=docs", *flags) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "docs holds files that are not a hero-bench sweep's (it has no sweep.json)" in err[0]
    assert snapshot(tmp_path / "parent") == before and not (tmp_path / "ray").exists()


def test_overwrite_of_a_symbolic_link_is_refused_with_a_clear_message(tmp_path, capsys):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "notes.txt").write_text("mine\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "rel").symlink_to(tmp_path / "elsewhere")
    assert sweep_cli(tmp_path, "--results", str(tmp_path / "results"), "--overwrite") == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"hero-bench: error: --overwrite: {tmp_path / 'results' / 'rel'} is a symbolic link (to {tmp_path / 'elsewhere'}); "
                   "it replaces only a folder a sweep wrote: remove the link, or choose another --results or name"]
    assert (tmp_path / "elsewhere" / "notes.txt").read_text() == "mine\n"


def a_sweeps_folder(path):
    """A results folder as a finished sweep leaves it (sweep.json, trials.csv, figures/)."""
    (path / "figures").mkdir(parents=True)
    folder.write_marker(path, {"sweep_id": "old", "storage": "/nowhere", "config": {}})
    shutil.copy(FIXTURE, path / "trials.csv")
    (path / "figures" / "a.png").write_bytes(b"png")
    return snapshot(path)


def git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.parametrize("change", ["none", "a-file-changed", "a-file-added", "an-ignored-file", "sweep.json", "not-committed",
                                    "no-repository"])
def test_only_a_sweeps_folder_exactly_as_git_holds_it_counts_as_shipped(tmp_path, change):
    """A sweep replaces such a folder without --overwrite (git brings it back); any change of one's own
    in it, or a sweep.json (a sweep ran there), makes it a folder of one's own again."""
    results = tmp_path / "results" / "rel"
    a_sweeps_folder(results)
    (results / "sweep.json").unlink()  # git ignores it: a clone has none
    (tmp_path / ".gitignore").write_text("results/*/wandb/\nresults/*/sweep.json\n")
    if change != "no-repository":
        git(tmp_path, "init", "-q")
    if change not in ("not-committed", "no-repository"):
        git(tmp_path, "add", "-A")
        git(tmp_path, "commit", "-q", "-m", "shipped results")
    if change == "a-file-changed":
        (results / "figures" / "a.png").write_bytes(b"mine")
    elif change == "a-file-added":
        (results / "notes.txt").write_text("mine\n")
    elif change == "an-ignored-file":
        (results / "wandb").mkdir()
        (results / "wandb" / "run.wandb").write_text("mine\n")
    elif change == "sweep.json":
        folder.write_marker(results, {"sweep_id": "mine", "storage": "/x", "config": {}})
    assert folder.shipped(results) == (change == "none")
    assert not folder.shipped(tmp_path / "results" / "absent")


def test_a_failed_swap_leaves_the_old_results_in_place(tmp_path, monkeypatch):
    results = tmp_path / "results" / "rel"
    before = a_sweeps_folder(results)
    rename, calls = os.rename, []

    def second_rename_fails(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the old folder was moved aside; putting the new one in place fails
            raise OSError(28, os.strerror(28))
        return rename(src, dst)

    monkeypatch.setattr(folder.os, "rename", second_rename_fails)
    with pytest.raises(ConfigError, match=rf"--overwrite: cannot replace {results}: No space left on device; it is unchanged"):
        folder.prepare(results, resume=False, overwrite=True, marker={"sweep_id": "new", "storage": "/x", "config": {}})
    assert snapshot(results) == before
    assert sorted(p.name for p in results.parent.iterdir()) == ["rel"]  # nothing left beside it

    monkeypatch.undo()
    lock = folder.prepare(results, resume=False, overwrite=True, marker={"sweep_id": "new", "storage": "/x", "config": {}})
    try:
        assert sorted(p.name for p in results.iterdir()) == ["sweep.json", "sweep.lock"]
        assert folder.read_marker(results)["sweep_id"] == "new" and folder.holder(results) is not None
    finally:
        lock.release()
    assert sorted(p.name for p in results.parent.iterdir()) == ["rel"] and folder.holder(results) is None
    assert sorted(p.name for p in results.iterdir()) == ["sweep.json"]


# -------------------------------------------------------------- 5. a changed experiment, 6. --resume plan

def test_resume_accepts_scheduling_changes_and_lists_every_key_that_changes_results():
    base = config_module.from_dict(experiment(sweep={"space": {"train.lr": [0.01, 0.02]}}))
    stored = json.loads(json.dumps(base.to_dict()))
    scheduling = config_module.from_dict(experiment(sweep={"space": {"train.lr": [0.01, 0.02]}, "max_concurrent_trials": 1,
                                                           "resources_per_trial": {"cpu": 2}}, tracking={"wandb": "offline"}))
    resume.check_unchanged(stored, scheduling)
    changed = config_module.from_dict(experiment(train={"epochs": 3}, sweep={"space": {"train.lr": [0.01, 0.03]}}))
    with pytest.raises(ConfigError) as info:
        resume.check_unchanged(stored, changed)
    assert str(info.value).startswith("--resume: the experiment differs from the one this sweep ran in 2 key(s): "
                                      "sweep.space.train.lr [0.01, 0.02] -> [0.01, 0.03], train.epochs 2 -> 3; ")


def test_resume_counts_a_key_the_schema_gained_since_the_sweep_ran_at_its_default():
    base = config_module.from_dict(experiment(sweep={"space": {"train.lr": [0.01, 0.02]}}))
    older = json.loads(json.dumps(base.to_dict()))
    del older["sweep"]["bracket"], older["sweep"]["confirm_seeds"], older["hypotheses"]  # a sweep.json from before them
    resume.check_unchanged(older, base)
    bracketed = config_module.from_dict(experiment(sweep={"space": {"train.lr": [0.01, 0.02]}, "bracket": 1}))
    with pytest.raises(ConfigError, match=r"in 1 key\(s\): sweep.bracket 0 -> 1; "):
        resume.check_unchanged(older, bracketed)


def save_checkpoint(storage, trial_dir, number, whose, state=True):
    path = storage / "rel" / trial_dir / f"checkpoint_{number:06d}"
    path.mkdir(parents=True)
    (path / trainable.TRIAL_FILE).write_text(whose if isinstance(whose, str) else json.dumps(whose))
    if state:
        torch.save({"epoch": number}, path / trainable.STATE_FILE)
    return path


def test_resume_plans_each_unfinished_trial_once_from_its_latest_checkpoint(tmp_path):
    """A grid of 4 points, twice each (num_samples 2). The table holds 3 finished rows (two for one
    point), a failed row and a damaged one; the storage holds checkpoints of an unfinished trial, of
    a finished one, of another sweep, one without its state.pt and one with garbage for trial.json."""
    config = config_module.from_dict(experiment(optimizer={"name": "hero"}, sweep={
        "space": {"optimizer.radius": [0.0, 0.1]}, "seeds": [0, 1], "num_samples": 2}))
    configs, space = TrialConfigs(config), search_space(config)
    point = {(r, s): {"optimizer.radius": r, "train.seed": s} for r in (0.0, 0.1) for s in (0, 1)}

    def made(trial_id, key, status="completed"):
        result = {"epoch": 2, "val_acc": 50.0, "test_acc": 40.0 + len(trial_id)} if status == "completed" else {}
        return trials.row(trial_id, configs.get(point[key]), point[key], result, "boom" if status == "failed" else None)

    rows = [made("a_00000", (0.0, 0)), made("a_00001", (0.0, 0)), made("a_00002", (0.1, 1)),
            made("a_00003", (0.1, 0), "failed"), made("a_00004", (0.0, 1))]
    text = pd.DataFrame(rows).to_csv(index=False)
    (tmp_path / "trials.csv").write_text(text[: len(text) - 20])  # a_00004's row is cut off
    storage = tmp_path / "ray"
    unfinished = {"sweep": "s1", "trial_id": "a_00005", "params": point[(0.1, 1)]}
    save_checkpoint(storage, "t5", 1, {**unfinished, "epoch": 1})
    latest = save_checkpoint(storage, "t5b", 2, {**unfinished, "epoch": 2})  # a resumed run of it went further
    save_checkpoint(storage, "t0", 2, {"sweep": "s1", "trial_id": "a_00000", "params": point[(0.0, 0)], "epoch": 2})
    save_checkpoint(storage, "other", 2, {"sweep": "s0", "trial_id": "b_00000", "params": point[(0.0, 1)], "epoch": 2})
    save_checkpoint(storage, "nostate", 2, {"sweep": "s1", "trial_id": "a_00006", "params": point[(0.0, 1)], "epoch": 2}, state=False)
    save_checkpoint(storage, "garbage", 2, "{not json")

    plan = resume.plan(configs, sweep_points(space, 2), tmp_path / "trials.csv", str(storage / "rel"), "s1")
    assert sorted(r["trial_id"] for r in plan.rows) == ["a_00000", "a_00001", "a_00002"]
    assert len(plan.damaged) == 1 and plan.damaged[0].startswith("line 6: ")
    left = sorted((p["optimizer.radius"], p["train.seed"], p.get(CONTINUES, "")) for p in plan.points)
    assert left == [(0.0, 1, ""), (0.0, 1, ""), (0.1, 0, ""), (0.1, 0, "a_00003"), (0.1, 1, "a_00005")]
    assert plan.checkpoints == {"a_00005": str(latest)}


# ------------------------------------------------------------------- 1, 5, 6, 7: Ctrl-C for real

@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A grid sweep of 3 trials, 2 at a time, stopped by Ctrl-C (SIGINT to its process group, as a
    terminal sends it) once both running trials have a checkpoint: the third has not started."""
    work = tmp_path_factory.mktemp("ctrl-c")
    write_experiment(work, **LONG, sweep={"space": {"train.lr": [0.01, 0.02, 0.03]}, "max_concurrent_trials": 2, "checkpoint_every": 5})
    args = ["sweep", "exp.yaml", "--storage", "ray"]
    with hero_bench_process(args, work, start_new_session=True) as (proc, collect, tree):
        assert wait_for(lambda: len(checkpointed_trials(work / "ray")) >= 2, proc, collect, timeout=300), (work / "hero-bench-0.log").read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGINT)
        assert wait_for(lambda: proc.poll() is not None, proc, collect, timeout=120)
        leftover = psutil.wait_procs(list(tree.values()), timeout=30)[1]
    return work, args, proc.returncode, leftover


@pytest.mark.slow
def test_ctrl_c_ends_the_sweep_with_one_line_and_keeps_only_trials_that_finished(interrupted):
    work, _, code, leftover = interrupted
    log = work / "hero-bench-0.log"
    table = read_table(work / "results" / "rel" / "trials.csv")
    assert code == 130
    assert_interrupted_output(log, finished=len(table), total=3)
    assert set(table["status"]) <= {"completed"}  # nothing interrupted is recorded, as `stopped` or otherwise
    assert leftover == []  # the sweep shut its Ray down
    assert folder.holder(work / "results" / "rel") is None and not (work / "results" / "rel" / "sweep.lock").exists()


@pytest.mark.slow
def test_resume_with_a_changed_experiment_is_refused_listing_the_key(interrupted, monkeypatch, capsys):
    work, args, _, _ = interrupted
    monkeypatch.chdir(work)
    before = snapshot(work / "results")
    assert cli.main([*args, "--resume", "--set", "train.epochs=3"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(
        "hero-bench: error: --resume: the experiment differs from the one this sweep ran in 1 key(s): train.epochs 40 -> 3;")
    assert snapshot(work / "results") == before


@pytest.mark.slow
def test_resume_unpickles_nothing_from_storage_and_continues_interrupted_trials_from_their_checkpoints(interrupted):
    work, args, _, _ = interrupted
    results = work / "results" / "rel"
    before = read_table(results / "trials.csv")
    started = {json.loads(p.read_text())["trial_id"] for p in (work / "ray" / "rel").glob("*/checkpoint_*/trial.json")}
    marker = work / "code-ran"
    assert plant_code(work / "ray" / "rel", marker) >= 5

    with hero_bench_process([*args, "--resume"], work, umask=0o027) as (proc, collect, tree):
        assert wait_for(lambda: proc.poll() is not None, proc, collect, timeout=400)
        assert proc.returncode == 0, (work / "hero-bench-1.log").read_text()[-3000:]
    assert not marker.exists(), "code planted in Ray's storage ran"
    after = read_table(results / "trials.csv")
    assert sorted(after["train.lr"]) == [0.01, 0.02, 0.03] and after["trial_id"].is_unique
    assert set(after["status"]) == {"completed"} and set(after["epochs_done"]) == {40}
    if len(before):
        same_rows(before, after)  # trials that had finished keep their rows exactly
    continued = after[after["trial_id"].isin(started - set(before["trial_id"]))]
    assert len(continued) >= 1 and (continued["resumed_from_epoch"] >= 5).all()  # from a checkpoint, under its own id
    config = config_module.load(work / "exp.yaml")
    for _, row in continued.iterrows():
        uninterrupted = run_trial(config_module.for_trial(config, {"train.lr": row["train.lr"], "train.seed": 0}))
        assert (row["test_acc"], row["train_loss"]) == (uninterrupted["test_acc"], uninterrupted["train_loss"])
    # 7: a file the sweep wrote has the mode the umask (027) gives any new file
    assert {stat.S_IMODE(p.stat().st_mode) for p in results.rglob("*") if p.is_file()} == {0o640}


# ------------------------------------------------- a signal while Ray starts: one line, no Ray left

def named(tree, name):
    """Whether a process of `tree` (pid -> psutil.Process) is called `name` and still runs."""
    with contextlib.suppress(psutil.NoSuchProcess):
        return any(p.name() == name and p.is_running() for p in list(tree.values()))
    return False


@pytest.mark.slow
@pytest.mark.parametrize("how, when", [("SIGTERM", "gcs_server"), ("SIGINT", "raylet")])
def test_a_signal_while_ray_starts_ends_with_the_line_and_leaves_no_ray_process(tmp_path, how, when):
    """SIGTERM to the driver once Ray's first process runs (ray.init has replaced the handler by then),
    Ctrl-C to its process group once the raylet runs: each ends the sweep with its one line, exit
    130, no process of its Ray left, nothing written, and no session folder left behind."""
    write_experiment(tmp_path)
    with hero_bench_process(["sweep", "exp.yaml", "--storage", "ray"], tmp_path, start_new_session=True) as (proc, collect, tree):
        assert wait_for(lambda: named(tree, when), proc, collect, timeout=300), (tmp_path / "hero-bench-0.log").read_text()[-3000:]
        if how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        assert wait_for(lambda: proc.poll() is not None, proc, collect, timeout=120)
        leftover = psutil.wait_procs(list(tree.values()), timeout=10)[1]
    log = tmp_path / "hero-bench-0.log"
    assert proc.returncode == 130, log.read_text()[-3000:]
    assert messages(log) == ["hero-bench: interrupted: 0 of 1 trials finished; nothing was changed: run the same command again"]
    assert "Traceback" not in log.read_text()
    assert leftover == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml", "hero-bench-0.log"]
    assert not list(session.root().glob(f"{proc.pid}-*")), "its Ray session folder was removed"


# ------------------------------------------------- 1 and 6: SIGTERM, a random search resumed from plain files

@pytest.mark.slow
def test_sigterm_stops_a_random_search_which_resumes_from_plain_files(tmp_path, monkeypatch, capsys):
    write_experiment(tmp_path, **LONG, sweep={"space": {"train.lr": {"dist": "loguniform", "low": 0.01, "high": 0.1}},
                                              "search": "random", "seeds": [0, 1, 2], "max_concurrent_trials": 1, "checkpoint_every": 5})
    args = ["sweep", "exp.yaml", "--storage", "ray"]
    with hero_bench_process(args, tmp_path) as (proc, collect, tree):
        assert wait_for(lambda: checkpointed_trials(tmp_path / "ray"), proc, collect, timeout=300), (tmp_path / "hero-bench-0.log").read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)  # the driver alone, as `kill` or a batch scheduler sends it
        assert wait_for(lambda: proc.poll() is not None, proc, collect, timeout=120)
        assert proc.returncode == 130
    assert_interrupted_output(tmp_path / "hero-bench-0.log", finished=len(read_table(tmp_path / "results" / "rel" / "trials.csv")), total=3)
    marker = tmp_path / "code-ran"
    assert plant_code(tmp_path / "ray" / "rel", marker) >= 3

    monkeypatch.chdir(tmp_path)
    # the same file into another results folder and the same storage would mix its trials with this sweep's,
    # and Ray's state of it would be the one the resume below reads: refused, the storage untouched
    kept = snapshot(tmp_path / "ray")
    assert cli.main([*args, "--results", "r_y"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"holds the trials of the sweep {folder.read_marker(tmp_path / 'results' / 'rel')['sweep_id']} of " in err[0]
    assert snapshot(tmp_path / "ray") == kept and not (tmp_path / "r_y").exists()

    with hero_bench_process([*args, "--resume"], tmp_path) as (proc, collect, tree):
        assert wait_for(lambda: proc.poll() is not None, proc, collect, timeout=400)
        assert proc.returncode == 0, (tmp_path / "hero-bench-1.log").read_text()[-3000:]
    assert not marker.exists(), "code planted in Ray's storage ran"
    after = read_table(tmp_path / "results" / "rel" / "trials.csv")
    assert len(after) == 3 and after["trial_id"].is_unique and set(after["status"]) == {"completed"}
    assert sorted(after["train.seed"]) == [0, 1, 2] and after["train.lr"].nunique() == 1  # one draw, at every seed
    assert (after["resumed_from_epoch"] >= 5).sum() >= 1  # the interrupted trial went on from its checkpoint


# ------------------------------------------------------------------- 3. two sweeps at once

@pytest.mark.slow
def test_a_second_sweep_into_a_running_sweeps_folder_is_refused_naming_it(tmp_path, monkeypatch, capsys):
    write_experiment(tmp_path, data=LONG["data"], train={**LONG["train"], "epochs": 150},
                     sweep={"space": {"train.lr": [0.01, 0.02]}, "checkpoint_every": 5})
    args = ["sweep", "exp.yaml", "--storage", "ray"]
    results = tmp_path / "results" / "rel"
    with hero_bench_process(args, tmp_path) as (first, collect, tree):
        assert wait_for(lambda: checkpointed_trials(tmp_path / "ray"), first, collect, timeout=300), (tmp_path / "hero-bench-0.log").read_text()[-3000:]
        running = f"{results} is in use by the sweep running as pid {first.pid} on "
        with hero_bench_process(args, tmp_path) as (second, collect_second, _):
            assert wait_for(lambda: second.poll() is not None, second, collect_second, timeout=120)
            assert second.returncode == 2
        assert len(messages(tmp_path / "hero-bench-1.log")) == 1 and running in messages(tmp_path / "hero-bench-1.log")[0]
        monkeypatch.chdir(tmp_path)
        for flag in ("--resume", "--overwrite"):
            assert cli.main([*args, flag]) == 2
            err = capsys.readouterr().err.splitlines()
            assert len(err) == 1 and running in err[0]
        assert wait_for(lambda: first.poll() is not None, first, collect, timeout=400)
        assert first.returncode == 0, (tmp_path / "hero-bench-0.log").read_text()[-3000:]
    table = read_table(results / "trials.csv")
    assert sorted(table["train.lr"]) == [0.01, 0.02] and table["trial_id"].is_unique and set(table["status"]) == {"completed"}
    assert not (results / "sweep.lock").exists()


@pytest.mark.slow
def test_the_lock_of_a_killed_sweep_is_taken_over(tmp_path):
    code = ("import sys, time; from hero_bench.sweep import folder; folder.Lock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(600)")
    holder = psutil.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=-1, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(ConfigError, match=rf"^{tmp_path} is in use by the sweep running as pid {holder.pid} on "):
            folder.Lock(tmp_path).acquire()
        holder.kill()
        holder.wait()
    finally:
        kill_all([holder])
    assert (tmp_path / "sweep.lock").exists()  # stale: its process is gone
    lock = folder.Lock(tmp_path).acquire()
    assert folder.holder(tmp_path).startswith(f"pid {os.getpid()} on ")
    lock.release()
    assert not (tmp_path / "sweep.lock").exists()


# ----------------------------------------------------------------------- sweeps in this process

def test_overwrite_with_an_unreachable_address_deletes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    old = a_sweeps_folder(tmp_path / "results" / "rel")
    write_experiment(tmp_path)
    assert cli.main(["sweep", "exp.yaml", "--overwrite", "--address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--address 127.0.0.1:1: cannot reach the Ray cluster" in err[0]
    assert snapshot(tmp_path / "results" / "rel") == old and sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml", "results"]


def test_overwrite_deletes_nothing_until_every_check_has_passed(local_ray, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_experiment(tmp_path)
    args = ["sweep", "exp.yaml", "--storage", "ray"]
    assert cli.main(args) == 0
    results = tmp_path / "results" / "rel"
    old, first = snapshot(results), folder.read_marker(results)["sweep_id"]
    capsys.readouterr()
    assert cli.main([*args, "--overwrite", "--set", "sweep.resources_per_trial.cpu=64"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "sweep.resources_per_trial.cpu is 64 but the Ray cluster has 2 CPUs" in err[0]
    assert snapshot(results) == old
    assert cli.main([*args, "--overwrite"]) == 0
    assert folder.read_marker(results)["sweep_id"] != first
    assert read_table(results / "trials.csv")["trial_id"].item() != pd.read_csv(io.BytesIO(old["trials.csv"]))["trial_id"].item()
    assert sorted(p.name for p in results.parent.iterdir()) == ["rel"]  # no .rel.old-* or .rel.new-* left


def test_resume_runs_the_trials_of_damaged_rows_again_from_their_checkpoints(local_ray, tmp_path):
    config = config_module.from_dict(experiment(sweep={"space": {"train.lr": [0.03, 0.05, 0.07]}}))
    run = dict(results_root=tmp_path / "results", storage=str(tmp_path / "ray"))
    sweep.run(config, **run)
    path = tmp_path / "results" / "rel" / "trials.csv"
    before = read_table(path).sort_values("train.lr").reset_index(drop=True)
    lines = path.read_text().splitlines(keepends=True)
    fields = lines[1].split(",")
    fields[lines[0].split(",").index("train_loss")] = "garbled"  # a metric that is no number
    path.write_text(lines[0] + ",".join(fields) + lines[2] + lines[3].split(",completed,")[0] + ",completed,")  # cut off
    with pytest.warns(trials.DamagedTableWarning, match=r"skipped 2 damaged row\(s\)"):
        frame = sweep.run(config, resume=True, **run)
    after = read_table(path).sort_values("train.lr").reset_index(drop=True)
    assert len(frame) == len(after) == 3 and list(after["trial_id"]) == list(before["trial_id"])
    rerun = after["resumed_from_epoch"] == 2  # from each trial's last checkpoint: nothing trained again
    assert rerun.sum() == 2
    metrics = ["status", "epochs_done", "val_acc", "test_acc", "train_loss", "grad_evals"]
    pd.testing.assert_frame_equal(after[metrics], before[metrics])
    same_rows(before[~rerun], after)


def test_a_tampered_checkpoint_is_refused_naming_its_file_and_runs_no_code(local_ray, tmp_path, capfd):
    config = config_module.from_dict(experiment(sweep={"space": {"train.lr": [0.03, 0.05]}, "max_failures": 0}))
    run = dict(results_root=tmp_path / "results", storage=str(tmp_path / "ray"))
    sweep.run(config, **run)
    path = tmp_path / "results" / "rel" / "trials.csv"
    table = read_table(path)
    victim = table["trial_id"].iloc[1]
    table.iloc[:1].to_csv(path, index=False)  # its trial ended after trials.csv was last written
    state = max((tmp_path / "ray" / "rel").glob(f"*{victim}*/checkpoint_*/{trainable.STATE_FILE}"))
    marker = tmp_path / "code-ran"
    torch.save({"epoch": 2, "model": RunsCode(marker)}, state)
    capfd.readouterr()
    frame = sweep.run(config, resume=True, **run)
    row = frame.set_index("trial_id").loc[victim]
    assert row["status"] == "failed" and not marker.exists()
    assert f"UnsafeCheckpointError: checkpoint {state} holds more than tensors" in row["error"]
    printed = "".join(capfd.readouterr())  # one line, where Ray printed 6 tracebacks
    failed = [line for line in printed.splitlines() if "] failed " in line]
    assert "Traceback" not in printed and len(failed) == 1 and f"checkpoint {state} holds more than tensors" in failed[0]


def test_asha_lets_a_trial_that_no_rung_stops_run_all_its_epochs(local_ray, tmp_path):
    """Ray's ASHAScheduler stops every trial at max_t, 100 by default: a 200-epoch trial stopped there
    was recorded `stopped`, as if ASHA had judged it."""
    config = config_module.from_dict(experiment(
        data={"args": {"num_samples": 64, "input_shape": [1, 2, 2], "num_classes": 2}}, model={"args": {"hidden": [4]}},
        train={"epochs": 101, "batch_size": 64}, sweep={"scheduler": "asha", "checkpoint_every": 101}))
    frame = sweep.run(config, results_root=tmp_path / "results", storage=str(tmp_path / "ray"))
    assert frame[["status", "epochs_done"]].values.tolist() == [["completed", 101]]


def test_every_results_folder_the_repository_ships_can_be_replaced_with_overwrite():
    """README's first command sweeps the quickstart into the results/quickstart this repository ships
    without its sweep.json (ignored by git), replacing it as --overwrite does (folder.shipped): every
    file such a folder holds must be one hero-bench writes, or the command refuses to start."""
    shipped = [p for p in (Path(__file__).parents[1] / "results").iterdir() if p.is_dir()]
    assert "quickstart" in {p.name for p in shipped}
    for results in shipped:
        assert folder.is_sweep(results), sorted(p.name for p in results.iterdir())
        folder.check(results, resume=False, overwrite=True)  # raises if --overwrite would refuse
