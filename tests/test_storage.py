"""Where a sweep writes is tried before anything is replaced, and one sweep's Ray storage is never
another's: `--overwrite` with a --storage that cannot be written (a path in /proc, a folder nobody
may write into, a file, a scheme no filesystem has, a bucket that cannot be reached) is refused by
real `hero-bench` processes with one line, and the results it would have replaced stay byte for
byte; a storage folder that holds another results folder's sweep is refused to a new sweep and to
--resume. None of this starts Ray."""
import contextlib
import os
import secrets
import socket
import subprocess
import sys

import pytest
import yaml

from hero_bench import cli, config as config_module
from hero_bench.errors import ConfigError
from hero_bench.sweep import folder, storage
from test_lifecycle import a_sweeps_folder, snapshot
from tiny import experiment


@contextlib.contextmanager
def unwritable_folder(path):
    """A folder nobody may write into: immutable for root (who ignores modes), read-only otherwise."""
    path.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("running as root on a filesystem without chattr +i: no folder root cannot write into")
        try:
            yield path
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)


@pytest.mark.slow
def test_overwrite_with_a_storage_that_cannot_be_written_keeps_the_old_results(tmp_path):
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(experiment()))
    old = a_sweeps_folder(tmp_path / "results" / "rel")
    (tmp_path / "a-file").write_text("not a folder\n")
    bucket = f"s3://hero-bench-no-such-bucket-{secrets.token_hex(6)}/x"  # no credentials; no network here
    with unwritable_folder(tmp_path / "immutable") as immutable:
        storages = ["/proc/nope", str(immutable / "ray"), str(tmp_path / "a-file"), "nosuch://x/y", bucket]
        before = snapshot(tmp_path)
        runs = [subprocess.Popen([sys.executable, "-m", "hero_bench.cli", "sweep", "exp.yaml", "--overwrite", "--storage", target],
                                 cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for target in storages]
        done = [(target, run.wait(timeout=300), *run.communicate()) for target, run in zip(storages, runs)]
        assert os.listdir(immutable) == []
    for target, code, out, err in done:
        lines = err.splitlines()
        assert code == 2 and out == "" and len(lines) == 1, (target, code, out, err)
        assert lines[0].startswith(f"hero-bench: error: cannot write to {target}: ") and lines[0].endswith(
            "; choose another --storage; nothing was changed"), lines[0]
    assert snapshot(tmp_path / "results" / "rel") == old  # byte for byte
    assert snapshot(tmp_path) == before and not (tmp_path / "ray_results").exists()


def test_a_probe_leaves_nothing_behind(tmp_path):
    assert storage.unwritable(tmp_path / "a" / "b" / "c") is None
    assert os.listdir(tmp_path) == []  # the folders it created for the probe are gone again
    (tmp_path / "kept").mkdir()
    assert storage.unwritable(tmp_path / "kept") is None and os.listdir(tmp_path / "kept") == []
    assert storage.unwritable(f"file://{tmp_path}/kept") is None and os.listdir(tmp_path / "kept") == []
    (tmp_path / "f").write_text("x")
    assert storage.unwritable(tmp_path / "f") == "it is a file, not a folder"
    assert storage.unwritable(tmp_path / "f" / "below") == "Not a directory"


def owned(tmp_path, results, sweep_id):
    """A finished sweep of tiny.experiment() in `results` whose Ray storage folder is tmp_path/ray/rel."""
    a_sweeps_folder(results)
    ran = config_module.from_dict(experiment()).to_dict()
    folder.write_marker(results, {"sweep_id": sweep_id, "storage": str(tmp_path / "ray"), "config": ran})
    storage.claim(str(tmp_path / "ray" / "rel"), results, sweep_id)
    return snapshot(tmp_path)


def test_a_storage_folder_of_another_results_folders_sweep_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(experiment()))
    before = owned(tmp_path, tmp_path / "r_x" / "rel", "5ca1ab1e")
    assert cli.main(["sweep", "exp.yaml", "--results", "r_y", "--storage", "ray"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"hero-bench: error: the Ray storage {tmp_path / 'ray' / 'rel'} holds the trials of the sweep 5ca1ab1e of "
                   f"{tmp_path / 'r_x' / 'rel'} on {socket.gethostname()}; a sweep of another results folder would mix its trials "
                   "with them: choose another --storage (or name), or remove that sweep's results and its storage folder first"]
    assert snapshot(tmp_path) == before and not (tmp_path / "r_y").exists()


def test_resume_refuses_a_storage_folder_that_holds_another_sweep(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(experiment()))
    owned(tmp_path, tmp_path / "results" / "rel", "0dd5eed5")
    stored = folder.read_marker(tmp_path / "results" / "rel")
    folder.write_marker(tmp_path / "results" / "rel", {**stored, "sweep_id": "5eed0001"})  # the sweep --resume continues
    before = snapshot(tmp_path)
    assert cli.main(["sweep", "exp.yaml", "--resume", "--storage", "ray"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"hero-bench: error: --resume: the Ray storage {tmp_path / 'ray' / 'rel'} holds the trials of the sweep 0dd5eed5 of ")
    assert "not of this sweep (5eed0001)" in err[0] and snapshot(tmp_path) == before


def test_a_storage_folder_whose_sweep_is_gone_is_taken_over(tmp_path):
    results, experiment_dir = tmp_path / "r_x" / "rel", str(tmp_path / "ray" / "rel")
    owned(tmp_path, results, "5ca1ab1e")
    with pytest.raises(ConfigError, match="holds the trials of the sweep 5ca1ab1e"):
        storage.check_owner(experiment_dir, tmp_path / "r_y" / "rel", "0ther1d0", resume=False)
    storage.check_owner(experiment_dir, results, "0ther1d0", resume=False)  # its own results folder, replaced with --overwrite
    folder.write_marker(results, {"sweep_id": "f0110we5", "storage": str(tmp_path / "ray"), "config": {}})
    storage.check_owner(experiment_dir, tmp_path / "r_y" / "rel", "0ther1d0", resume=False)  # r_x now holds another sweep
