import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import yaml

from hero_bench import cli, config as config_module, experiment_files

ROOT = Path(__file__).resolve().parents[1]

TINY = """
name: tiny
data: {name: synthetic, args: {num_samples: 120, input_shape: [1, 4, 4], num_classes: 3}}
model: {name: mlp, args: {hidden: [8]}}
train: {epochs: 1, batch_size: 40, threads: 1}
evaluate: {ptq_bits: [8, 2], hessian: {samples: 64, probes: 4}, weight_noise: {sigmas: [0.0, 0.1], draws: 2}}
"""


@pytest.fixture
def experiment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def test_help_of_every_subcommand_describes_it(capsys):
    for command in ("train", "sweep", "leaderboard", "report", "list"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--address" in out and "--resume" in out and "KEY=VALUE" in out


def test_list_prints_every_registry(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "methods: gradnorm, hero, sam, sgd" in out and "resnet20, resnet32, resnet56" in out
    assert cli.main(["list", "models", "--pattern", "resnet*"]) == 0
    assert capsys.readouterr().out.strip() == "models: resnet20, resnet32, resnet56"


def test_list_experiments_names_every_shipped_file_and_where_it_is(capsys):
    assert cli.main(["list", "experiments"]) == 0
    shipped = sorted(path.stem for path in (ROOT / "experiments").glob("*.yaml"))
    assert capsys.readouterr().out == f"experiments: {', '.join(shipped)} (files in {ROOT / 'experiments'})\n"
    assert cli.main(["list", "experiments", "--pattern", "mnist1d_*"]) == 0
    assert capsys.readouterr().out.startswith("experiments: mnist1d_baselines, mnist1d_generalization, mnist1d_label_noise, mnist1d_noise_probe (")


def test_a_bare_name_is_the_shipped_experiment_and_a_path_is_a_file(experiment, tmp_path, capsys):
    assert experiment_files.resolve("quickstart") == ROOT / "experiments" / "quickstart.yaml"
    (tmp_path / "quickstart").mkdir()  # a folder of that name in the working directory changes nothing
    assert experiment_files.resolve("quickstart") == ROOT / "experiments" / "quickstart.yaml"
    assert experiment_files.resolve(str(experiment)) == experiment
    (tmp_path / "mine").write_text(experiment.read_text())  # an existing file wins, with or without a suffix
    assert experiment_files.resolve("mine") == Path("mine")
    for path in ("experiments/absent.yaml", "absent.yml"):
        assert cli.main(["train", path]) == 2
        assert capsys.readouterr().err == f"hero-bench: error: experiment file {path!r} does not exist\n"
    assert cli.main(["train", "quickstar"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("hero-bench: error: experiment 'quickstar' is neither a file nor the name "
                                               "of a shipped experiment (cifar100_generalization, ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "quickstart", "tiny.yaml"]  # nothing written


def test_train_of_a_shipped_experiment_by_name_runs_that_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    budget = ["--set", "train.epochs=1", "--set", "evaluate.hessian.trace=false", "--quiet"]
    assert cli.main(["train", "quickstart", *budget]) == 0
    ran = yaml.safe_load((tmp_path / "runs" / "quickstart" / "1" / "config.yaml").read_text())
    shipped = config_module.load(ROOT / "experiments" / "quickstart.yaml", budget[1:4:2]).to_dict()
    del shipped["sweep"]
    assert ran == shipped  # the file's HERO point: radius and hessian_coef set, so as given


def test_train_writes_a_new_numbered_run_each_time_with_what_it_ran(experiment, tmp_path, capsys):
    hero = ["train", str(experiment), "--set", "optimizer.name=hero", "--quiet"]
    assert cli.main(hero) == 0
    out = capsys.readouterr().out
    for key in ("test_acc", "ptq_acc_2bit", "hessian_top_eig", "hessian_trace", "weight_noise_acc_0.1", "grad_evals"):
        assert key in out, key
    assert out.endswith("wrote runs/tiny/1/metrics.json and runs/tiny/1/config.yaml\n")
    metrics = json.loads((tmp_path / "runs" / "tiny" / "1" / "metrics.json").read_text())
    ran = yaml.safe_load((tmp_path / "runs" / "tiny" / "1" / "config.yaml").read_text())
    assert metrics["weight_noise_acc_0"] == metrics["test_acc"]
    # every default as used, hero's own radius and hessian_coef in place of null, no sweep section
    assert ran["optimizer"]["name"] == "hero" and (ran["optimizer"]["radius"], ran["optimizer"]["hessian_coef"]) == (0.5, 5.0)
    assert ran["train"]["lr"] == 0.1 and ran["train"]["momentum"] == 0.9 and "sweep" not in ran
    assert cli.main(["train", str(experiment), "--quiet"]) == 0  # the file's own method next: a folder of its own
    sgd = yaml.safe_load((tmp_path / "runs" / "tiny" / "2" / "config.yaml").read_text())["optimizer"]
    assert (sgd["name"], sgd["radius"], sgd["hessian_coef"]) == ("sgd", 0.0, 0.0)
    # the config.yaml of a run trains that run again
    assert cli.main(["train", "runs/tiny/1/config.yaml", "--quiet"]) == 0
    again = json.loads((tmp_path / "runs" / "tiny" / "3" / "metrics.json").read_text())
    assert (again["test_acc"], again["train_loss"]) == (metrics["test_acc"], metrics["train_loss"])
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir()) == ["1", "2", "3"]


def test_train_into_an_out_folder_that_holds_a_run_needs_overwrite(experiment, tmp_path, capsys):
    assert cli.main(["train", str(experiment), "--out", "out", "--quiet"]) == 0
    before = (tmp_path / "out" / "metrics.json").read_bytes()
    capsys.readouterr()
    assert cli.main(["train", str(experiment), "--out", "out", "--set", "train.seed=1", "--quiet"]) == 2
    assert capsys.readouterr().err == ("hero-bench: error: out already holds a trained run; pass --overwrite to replace it, "
                                       "another --out, or no --out for a new runs/tiny/N\n")
    assert (tmp_path / "out" / "metrics.json").read_bytes() == before
    assert cli.main(["train", str(experiment), "--out", "out", "--set", "train.seed=1", "--quiet", "--overwrite"]) == 0
    assert yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["train"]["seed"] == 1


def train_output(experiment, stderr):
    """What `hero-bench train` prints on stdout and stderr, with stderr a pipe or a terminal (a pty)."""
    command = [sys.executable, "-m", "hero_bench.cli", "train", str(experiment)]
    if stderr == "pipe":
        done = subprocess.run(command, capture_output=True, cwd=experiment.parent, timeout=300)
        return done.returncode, done.stdout.decode(), done.stderr.decode()
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns, as a terminal has
    with open(experiment.parent / "stdout", "w+b") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=follower, cwd=experiment.parent)
        os.close(follower)
        terminal = b""
        while chunk := _read(leader):
            terminal += chunk
        os.close(leader)
        code = proc.wait(timeout=300)
        out.seek(0)
        return code, out.read().decode(), terminal.decode()


def _read(fd):
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the process closed the terminal
        return b""


@pytest.mark.parametrize("stderr", ["pipe", "terminal"])
def test_train_shows_progress_as_a_bar_on_a_terminal_and_a_line_per_epoch_elsewhere(experiment, stderr):
    experiment.write_text(TINY.replace("epochs: 1", "epochs: 3"))
    code, out, err = train_output(experiment, stderr)
    assert code == 0, err
    epochs = [line for line in out.splitlines() if re.match(r"epoch \d+/", line)]
    assert "\r" not in out
    if stderr == "pipe":
        assert [line.split(":")[0] for line in epochs] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
        assert all("val_acc" in line and "test_acc" in line for line in epochs) and err == ""
    else:
        assert epochs == [] and "\r" in err and "epoch 3/3, val_acc" in err


def test_train_prints_the_density_shortened_and_writes_it_whole(experiment, tmp_path, capsys):
    assert cli.main(["train", str(experiment), "--set", "evaluate.hessian.density={runs: 2, steps: 30}",
                     "--out", "out", "--quiet"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("hessian_density"))
    density = json.loads(json.loads((tmp_path / "out" / "metrics.json").read_text())["hessian_density"])
    assert len(density["nodes"]) == len(density["weights"]) == 60
    assert len(line) < 120 and line.endswith(f"({len(json.dumps(density))} characters)")


def test_train_takes_key_value_overrides_after_the_file_as_set_does(experiment, tmp_path):
    values = ["optimizer.name=hero", "optimizer.radius=0.1", "train.epochs=2"]
    runs = {"set": ["train", str(experiment), *[a for v in values for a in ("--set", v)], "--out", "set"],
            "positional": ["train", str(experiment), *values, "--out", "positional"],  # as `wandb agent` passes them
            "after options": ["train", str(experiment), "--out", "after options", values[0], "--quiet", *values[1:]]}
    for argv in runs.values():
        assert cli.main([*argv, "--quiet"]) == 0
    configs = {name: (tmp_path / name / "config.yaml").read_text() for name in runs}
    assert configs["positional"] == configs["set"] == configs["after options"]
    resolved = yaml.safe_load(configs["set"])
    assert (resolved["optimizer"]["name"], resolved["optimizer"]["radius"], resolved["train"]["epochs"]) == ("hero", 0.1, 2)
    metrics = {name: json.loads((tmp_path / name / "metrics.json").read_text()) for name in runs}
    for key in ("val_acc", "test_acc", "train_loss", "grad_evals", "hessian_top_eig", "ptq_acc_2bit", "epochs_done"):
        assert metrics["positional"][key] == metrics["set"][key] == metrics["after options"][key], key
    assert metrics["set"]["epochs_done"] == 2
    assert not list(tmp_path.rglob("wandb*"))  # train logs to W&B only when asked (--wandb)
