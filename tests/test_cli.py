import json

import pytest
import yaml

from hero_bench import cli

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


def test_train_prints_metrics_and_writes_metrics_and_resolved_config(experiment, tmp_path, capsys):
    assert cli.main(["train", str(experiment), "--set", "optimizer.name=hero", "--out", "out", "--quiet"]) == 0
    out = capsys.readouterr().out
    for key in ("test_acc", "ptq_acc_2bit", "hessian_top_eig", "hessian_trace", "weight_noise_acc_0.1", "grad_evals"):
        assert key in out, key
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    resolved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert resolved["optimizer"]["name"] == "hero" and resolved["train"]["lr"] == 0.1
    assert metrics["weight_noise_acc_0"] == metrics["test_acc"]


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
