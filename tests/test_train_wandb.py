"""`hero-bench train` on W&B: `--wandb offline` logs the trial as a sweep logs its trials, and a W&B
agent can drive it with the sweep YAML of docs/wandb.md (`command: [hero-bench, train, FILE,
${args_no_hyphens}]`). Runs are read back from their offline `.wandb` files (wandb_records)."""
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import wandb
import yaml
from wandb import wandb_agent

from hero_bench import cli
from hero_bench import config as config_module
from tiny import experiment
from wandb_records import read_runs

ROOT = Path(__file__).resolve().parents[1]
HERO = {"name": "hero", "radius": 0.5, "hessian_coef": 1.0}


def nested(config, dotted):
    for part in dotted.split("."):
        config = config[part]
    return config


def test_train_logs_its_run_when_asked_and_the_seeds_of_a_configuration_share_its_hash(tmp_path, monkeypatch,
                                                                                      fresh_wandb):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(experiment(name="single", train={"epochs": 3}, optimizer=HERO)))
    for seed in (0, 1):
        assert cli.main(["train", "exp.yaml", f"train.seed={seed}", "--wandb", "offline", "--quiet",
                         "--out", f"seed{seed}"]) == 0
    wandb.teardown()  # the service writes out every run it holds
    runs = {}
    for seed in (0, 1):
        (attempts,) = read_runs(tmp_path / f"seed{seed}" / "wandb" / "wandb").values()
        (run,) = attempts
        metrics = json.loads((tmp_path / f"seed{seed}" / "metrics.json").read_text())
        assert (run["run"].run_group, run["run"].job_type, run["config"]["family"]) == ("single", "hero", "hero")
        assert run["config"]["train"]["seed"] == seed and run["config"]["optimizer"]["radius"] == 0.5
        assert [(h["_step"], h["epoch"]) for h in run["history"]] == [(1, 1), (2, 2), (3, 3)]
        assert run["history"][-1]["val_acc"] == metrics["val_acc"] and run["summary"]["test_acc"] == metrics["test_acc"]
        assert run["summary"]["status"] == "completed" and run["exit_code"] == 0 and run["output"] == []
        runs[seed] = run
    assert runs[0]["config"]["config_hash"] == runs[1]["config"]["config_hash"]
    assert re.fullmatch(r"[0-9a-f]{12}", runs[0]["config"]["config_hash"])


def documented_sweep():
    """The W&B sweep YAML of docs/wandb.md: the YAML block whose command runs `hero-bench train`."""
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "wandb.md").read_text(), flags=re.S)
    (sweep,) = [yaml.safe_load(b) for b in blocks if "${args_no_hyphens}" in b]
    return sweep


@pytest.mark.slow
def test_a_wandb_agent_runs_train_with_the_documented_sweep_command(tmp_path, monkeypatch, fresh_wandb):
    sweep = documented_sweep()
    program, command, file, macro = sweep["command"]
    assert (program, command, macro) == ("hero-bench", "train", "${args_no_hyphens}")
    config_module.load(ROOT / file)  # the documented experiment exists and loads
    assert sweep["metric"]["name"] == "val_acc" and sweep["metric"]["goal"] == "maximize"
    # the agent's choice: each parameter's first value (or lowest), on a tiny experiment for speed
    chosen = {key: spec["values"][0] if "values" in spec else spec["min"] for key, spec in sweep["parameters"].items()}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(experiment(name="agent", optimizer=HERO)))

    # `wandb agent SWEEP_ID` sets WANDB_SWEEP_ID; for each run the agent picks, it writes the run's
    # parameters, sets WANDB_RUN_ID and WANDB_SWEEP_PARAM_PATH, and starts the sweep's command
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep1")
    for variable in ("WANDB_DIR", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH"):  # restored after the agent sets them
        monkeypatch.setenv(variable, "")
    monkeypatch.setattr(wandb_agent, "AgentProcess", SimpleNamespace)  # records the process instead of starting it
    agent = wandb_agent.Agent(api=None, queue=None, sweep_id="sweep1")
    agent._sweep_command = [program, command, "tiny.yaml", macro]
    agent._command_run({"run_id": "run1", "program": None, "args": {k: {"value": v} for k, v in chosen.items()}})
    argv, env = agent._run_processes["run1"].command, agent._run_processes["run1"].env
    assert argv == ["hero-bench", "train", "tiny.yaml", *[f"{key}={value}" for key, value in chosen.items()]]

    # the command the agent built, as a process (`python -m hero_bench.cli` is the `hero-bench` script)
    done = subprocess.run([sys.executable, "-m", "hero_bench.cli", *argv[1:]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**env, "WANDB_MODE": "offline"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "runs" / "agent" / "run1"  # a folder per run of the W&B sweep
    metrics = json.loads((out / "metrics.json").read_text())
    ((run,),) = read_runs(out / "wandb" / "wandb").values()
    assert (run["run"].run_id, run["run"].sweep_id) == ("run1", "sweep1")
    for key, value in chosen.items():
        assert run["config"][key] == value  # the sweep's parameter, as W&B records it
        assert nested(run["config"], key) == pytest.approx(value)  # and what the trial ran with it
    assert [h["epoch"] for h in run["history"]] == [1, 2]
    assert run["summary"][sweep["metric"]["name"]] == metrics["val_acc"]
