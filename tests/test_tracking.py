"""W&B tracking read back: the offline runs a tiny sweep writes hold what each trial ran and reported.

The runs are decoded from their `.wandb` files by `wandb_records` (a reader of W&B's log format
written for these tests), then compared with trials.csv, which the sweep writes independently.
"""
import json

import pandas as pd
import pytest
import yaml

from hero_bench import cli
from tiny import experiment
from wandb_records import read_run

EXPERIMENT = experiment(
    name="tracked", train={"epochs": 3}, optimizer={"name": "hero", "hessian_coef": 10.0}, evaluate={"ptq_bits": [4]},
    sweep={"space": {"optimizer.radius": [0.0, 0.5], "train.lr": [0.03, 0.05]}},
)
FINAL = ["val_acc", "test_acc", "train_acc", "gen_gap", "ptq_acc_4bit", "grad_evals"]


@pytest.fixture(scope="module")
def tracked(local_ray, tmp_path_factory):
    """trials.csv, the decoded offline runs (by run id) and the results folder of one tiny sweep
    with W&B offline."""
    import wandb

    folder = tmp_path_factory.mktemp("tracked")
    (folder / "exp.yaml").write_text(yaml.safe_dump(EXPERIMENT))
    wandb.teardown()
    try:
        code = cli.main(["sweep", str(folder / "exp.yaml"), "--wandb", "offline",
                         "--results", str(folder / "results"), "--storage", str(folder / "ray")])
    finally:
        wandb.teardown()
    assert code == 0
    results = folder / "results" / "tracked"
    runs = [read_run(d) for d in (results / "wandb" / "wandb").glob("offline-run-*")]
    return pd.read_csv(results / "trials.csv", dtype={"trial_id": str}), {r["run"].run_id: r for r in runs}, results


def test_one_offline_run_per_trial_grouped_by_experiment_and_typed_by_family(tracked):
    trials, runs, _ = tracked
    assert sorted(runs) == sorted([f"tracked-{t}" for t in trials["trial_id"]] + ["tracked-summary"])
    for row in trials.to_dict("records"):
        run = runs[f"tracked-{row['trial_id']}"]["run"]
        family = "sgd" if row["optimizer.radius"] == 0 else "hero"  # hessian_coef 10 > 0 throughout
        assert (run.run_group, run.job_type, list(run.tags)) == ("tracked", family, [family])


def test_each_run_config_is_the_nested_config_the_trial_ran(tracked):
    trials, runs, _ = tracked
    for row in trials.to_dict("records"):
        config = runs[f"tracked-{row['trial_id']}"]["config"]
        assert config["optimizer"]["radius"] == row["optimizer.radius"]
        assert config["train"]["lr"] == row["train.lr"]
        assert config["optimizer"]["hessian_coef"] == 10.0 and config["train"]["epochs"] == 3
        assert "sweep" not in config


def test_each_run_logs_every_epoch_and_ends_with_the_trials_final_metrics(tracked):
    trials, runs, _ = tracked
    assert set(trials["status"]) == {"completed"}
    for row in trials.to_dict("records"):
        run = runs[f"tracked-{row['trial_id']}"]
        history = run["history"]
        assert [h["_step"] for h in history] == [1, 2, 3] == [h["epoch"] for h in history]
        assert all(0 <= h["val_acc"] <= 100 and h["train_loss"] > 0 for h in history)
        assert history[-1]["val_acc"] == pytest.approx(row["val_acc"])
        for key in FINAL:
            assert run["summary"][key] == pytest.approx(row[key]), key
        assert run["summary"]["status"] == "completed" and run["exit_code"] == 0


def test_the_sweep_writes_its_figures_and_the_summary_run_logs_them_and_the_leaderboard(tracked):
    _, runs, results = tracked
    summary = runs["tracked-summary"]
    assert summary["run"].job_type == "summary"
    logged = {key: value for row in summary["history"] for key, value in row.items()}
    assert logged["leaderboard"]["_type"] == "table-file"
    board = pd.read_csv(results / "leaderboard.csv")
    (table_file,) = (results / "wandb" / "wandb").glob(f"offline-run-*summary/files/{logged['leaderboard']['path']}")
    table = json.loads(table_file.read_text())
    assert table["columns"] == list(board.columns) and len(table["data"]) == len(board)
    pngs = sorted((results / "figures").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000 for p in pngs)
    figures = [key for key in logged if key.startswith("figures/")]
    assert sorted(figures) == [f"figures/{p.stem}" for p in pngs]
    assert figures and all(logged[key]["_type"] == "image-file" for key in figures)
