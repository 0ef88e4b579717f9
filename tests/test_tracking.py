"""W&B tracking read back: the offline runs a tiny sweep writes hold what each trial ran and reported.

The runs are decoded from their `.wandb` files by `wandb_records` (a reader of W&B's log format
written for these tests), then compared with what the sweep wrote independently: trials.csv,
per_config.csv and the other results files, and Ray's own record of every result (result.json).
"""
import base64
import hashlib
import json

import pandas as pd
import pytest
import wandb_workspaces.reports.v2 as wr
import yaml
from wandb_workspaces import expr

from hero_bench import cli
from hero_bench.results import report
from tiny import experiment
from wandb_records import read_runs

EXPERIMENT = experiment(
    name="tracked", train={"epochs": 3}, optimizer={"name": "hero", "hessian_coef": 10.0}, evaluate={"ptq_bits": [4]},
    sweep={"space": {"optimizer.radius": [0.0, 0.5]}, "seeds": [0, 1]},
)
FINAL = ["val_acc", "test_acc", "train_acc", "gen_gap", "ptq_acc_4bit", "grad_evals"]
# What Ray Tune adds to every result a trial reports (written out here, not taken from hero-bench or Ray)
RAY_BOOKKEEPING = {"timestamp", "pid", "hostname", "node_ip", "date", "training_iteration", "time_this_iter_s",
                   "time_total_s", "time_since_restore", "iterations_since_restore", "done", "trial_id",
                   "experiment_tag", "config", "checkpoint_dir_name", "should_checkpoint"}
W_AND_B = {"_step", "_timestamp", "_runtime"}  # what W&B adds to every history row


@pytest.fixture(scope="module")
def tracked(local_ray, tmp_path_factory):
    """trials.csv, the decoded offline runs (by run id), the results folder and Ray's storage of one
    tiny sweep with W&B offline."""
    import wandb

    folder = tmp_path_factory.mktemp("tracked")
    (folder / "exp.yaml").write_text(yaml.safe_dump(EXPERIMENT))
    wandb.teardown()
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("WANDB_DATA_DIR", str(folder / "wandb-data"))  # where W&B stages artifact files
            code = cli.main(["sweep", str(folder / "exp.yaml"), "--wandb", "offline",
                             "--results", str(folder / "results"), "--storage", str(folder / "ray")])
    finally:
        wandb.teardown()
    assert code == 0
    results = folder / "results" / "tracked"
    runs = read_runs(results / "wandb" / "wandb")
    assert all(len(attempts) == 1 for attempts in runs.values())  # no trial was retried or resumed
    trials = pd.read_csv(results / "trials.csv", dtype={"trial_id": str, "config_hash": str})
    return trials, {run_id: attempts[0] for run_id, attempts in runs.items()}, results, folder / "ray"


def test_one_offline_run_per_trial_grouped_by_experiment_and_typed_by_family(tracked):
    trials, runs, *_ = tracked
    assert sorted(runs) == sorted([f"tracked-{t}" for t in trials["trial_id"]] + ["tracked-summary"])
    for row in trials.to_dict("records"):
        run = runs[f"tracked-{row['trial_id']}"]["run"]
        family = "sgd" if row["optimizer.radius"] == 0 else "hero"  # hessian_coef 10 > 0 throughout
        assert (run.run_group, run.job_type, list(run.tags)) == ("tracked", family, [family])


def test_each_run_config_is_the_nested_config_the_trial_ran(tracked):
    trials, runs, *_ = tracked
    for row in trials.to_dict("records"):
        config = runs[f"tracked-{row['trial_id']}"]["config"]
        assert config["optimizer"]["radius"] == row["optimizer.radius"]
        assert config["train"]["seed"] == row["train.seed"] and config["train"]["lr"] == row["train.lr"]
        assert config["optimizer"]["hessian_coef"] == 10.0 and config["train"]["epochs"] == 3
        assert "sweep" not in config and "ray" not in config


def test_the_seeds_of_a_configuration_share_a_config_hash_that_per_config_shows(tracked):
    trials, runs, results, *_ = tracked
    per_config = pd.read_csv(results / "per_config.csv", dtype={"config_hash": str})
    hashes = {}
    for row in trials.to_dict("records"):
        config = runs[f"tracked-{row['trial_id']}"]["config"]
        assert config["config_hash"] == row["config_hash"]
        assert config["family"] == runs[f"tracked-{row['trial_id']}"]["run"].job_type
        hashes.setdefault(row["optimizer.radius"], set()).add(config["config_hash"])
    # a configuration is everything but the seed: here the radius
    assert len(hashes) == 2 and all(len(seeds) == 1 for seeds in hashes.values())
    assert len(set.union(*hashes.values())) == 2
    shown = dict(zip(per_config["optimizer.radius"], per_config["config_hash"]))
    assert {radius: {h} for radius, h in shown.items()} == hashes
    assert per_config["config_id"].tolist() == [0, 1]  # the numbering stays per_config's own


def test_each_run_logs_every_epoch_and_ends_with_the_trials_final_metrics(tracked):
    trials, runs, *_ = tracked
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


def test_runs_log_what_the_trial_reported_and_none_of_rays_bookkeeping(tracked):
    trials, runs, _, storage = tracked
    for trial_id in trials["trial_id"]:
        run = runs[f"tracked-{trial_id}"]
        (result_file,) = storage.glob(f"tracked/*{trial_id}*/result.json")
        reported = [json.loads(line) for line in result_file.read_text().splitlines()]
        assert {"pid", "timestamp", "training_iteration", "time_this_iter_s", "time_total_s"} <= set(reported[0])
        assert len(reported) == len(run["history"]) == 3
        for ray_result, row in zip(reported, run["history"]):
            ours = {k: v for k, v in ray_result.items()
                    if k not in RAY_BOOKKEEPING and isinstance(v, (int, float)) and not isinstance(v, bool)}
            assert {k: v for k, v in row.items() if k not in W_AND_B} == pytest.approx(ours)
        assert not RAY_BOOKKEEPING & set(run["summary"])


def test_every_metric_of_a_trial_run_is_plotted_against_the_epoch(tracked):
    trials, runs, *_ = tracked
    for trial_id in trials["trial_id"]:
        steps = {m.glob_name or m.name: m.step_metric for m in runs[f"tracked-{trial_id}"]["metrics"]}
        assert steps == {"epoch": "", "*": "epoch"}


def test_the_sweep_writes_its_figures_and_the_summary_run_logs_them_and_the_leaderboard(tracked):
    _, runs, results, *_ = tracked
    summary = runs["tracked-summary"]
    assert summary["run"].job_type == "summary"
    logged = {key: value for row in summary["history"] for key, value in row.items()}
    assert logged["leaderboard"]["_type"] == "table-file" and summary["summary"]["leaderboard"]["_type"] == "table-file"
    board = pd.read_csv(results / "leaderboard.csv")
    (table_file,) = (results / "wandb" / "wandb").glob(f"offline-run-*summary/files/{logged['leaderboard']['path']}")
    table = json.loads(table_file.read_text())
    assert table["columns"] == list(board.columns) and len(table["data"]) == len(board)
    pngs = sorted((results / "figures").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000 for p in pngs)
    figures = [key for key in logged if key.startswith("figures/")]
    assert sorted(figures) == [f"figures/{p.stem}" for p in pngs]
    assert figures and all(logged[key]["_type"] == "image-file" for key in figures)


def test_the_summary_run_logs_the_results_files_as_an_artifact(tracked):
    _, runs, results, *_ = tracked
    (artifact,) = [a for a in runs["tracked-summary"]["artifacts"] if a.type == "results"]  # (a Table is one too)
    assert artifact.name == "tracked-results"
    entries = {entry.path: entry for entry in artifact.manifest.contents}
    assert sorted(entries) == ["comparisons.csv", "leaderboard.csv", "trials.csv"]
    for name, entry in entries.items():
        content = (results / name).read_bytes()
        assert entry.digest == base64.b64encode(hashlib.md5(content).digest()).decode() and entry.size == len(content)


def selects(filters, run):
    """Whether a runset filter, as W&B reads it (wandb_workspaces.expr), selects `run` (a RunRecord)."""
    if filters.op == "AND":
        return all(selects(f, run) for f in filters.filters)
    assert filters.key.section == "run", filters
    value = {"name": run.run_id, "group": run.run_group, "jobType": run.job_type}[filters.key.name]
    return {"=": value == filters.value, "!=": value != filters.value}[filters.op]


def references(panel):
    """(where, key) of everything a panel reads from its runs: config, summary or history."""
    if isinstance(panel, wr.ParallelCoordinatesPlot):
        return [("config" if isinstance(c.metric, wr.Config) else "summary", c.metric.name) for c in panel.columns]
    if isinstance(panel, wr.LinePlot):
        return [("history", panel.x), *[("history", y) for y in panel.y], ("config", panel.groupby.name)]
    if isinstance(panel, wr.BarPlot):  # grouped by the runs' job type, an attribute of every run
        return [("summary", m) for m in panel.metrics]
    if isinstance(panel, wr.ScatterPlot):
        return [("summary", panel.x), ("summary", panel.y)]
    if isinstance(panel, wr.WeavePanelSummaryTable):
        return [("summary", panel.table_name)]
    if isinstance(panel, wr.MediaBrowser):
        return [("history", key) for key in panel.media_keys]
    raise AssertionError(f"a panel of a type this test does not know: {type(panel).__name__}")


def value_in(run, where, key):
    """The value a run holds under a panel's key (a config key is dotted: optimizer.radius)."""
    if where == "config":
        value = run["config"]
        for part in key.split("."):
            value = value[part]
        return value
    if where == "summary":
        return run["summary"][key]
    return next(row[key] for row in run["history"] if key in row)


def test_the_report_built_offline_refers_to_the_summary_runs_table_and_images_and_the_trial_runs_keys(tracked):
    trials, runs, results, *_ = tracked
    built = report.build_report(results, entity="team", project="hero")
    board, sweep, figures = [b for b in built.blocks if isinstance(b, wr.PanelGrid)]
    def selected(grid):
        (runset,) = grid.runsets
        return sorted(r for r, run in runs.items() if selects(expr.expr_to_filters(runset.filters), run["run"]))

    assert selected(board) == selected(figures) == ["tracked-summary"]  # the summary run, and only it
    assert selected(sweep) == sorted(f"tracked-{t}" for t in trials["trial_id"])  # every trial run, and only those

    summary = runs["tracked-summary"]
    assert [type(p) for p in board.panels] == [wr.WeavePanelSummaryTable]
    assert value_in(summary, *references(board.panels[0])[0])["_type"] == "table-file"
    assert {type(p) for p in figures.panels} == {wr.MediaBrowser}
    shown = [key for panel in figures.panels for _, key in references(panel)]
    assert sorted(shown) == sorted(f"figures/{p.stem}" for p in (results / "figures").glob("*.png"))
    assert all(value_in(summary, "history", key)["_type"] == "image-file" for key in shown)

    assert [type(p) for p in sweep.panels] == [wr.ParallelCoordinatesPlot, wr.LinePlot, wr.BarPlot, wr.ScatterPlot]
    for panel in sweep.panels:
        for where, key in references(panel):
            for trial_id in trials["trial_id"]:
                value = value_in(runs[f"tracked-{trial_id}"], where, key)
                assert isinstance(value, (int, float, str)), (type(panel).__name__, where, key)
