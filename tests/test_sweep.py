"""End-to-end sweeps through a real local Ray (started once for this module, always shut down)."""
import json

import pandas as pd
import pytest
import yaml

from hero_bench import cli
from hero_bench import config as config_module
from hero_bench import sweep, trials
from hero_bench.errors import ConfigError
from hero_bench.train import run_trial
from hero_bench.results import outputs
from tiny import experiment
from wandb_records import read_runs

TINY = experiment(
    name="tiny", optimizer={"name": "hero", "hvp": "exact"}, evaluate={"ptq_bits": [4]},
    sweep={"space": {"optimizer.radius": [0.0, 0.1], "optimizer.hessian_coef": [0.0, 1.0]}},
)


def make(**sweep_section):
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY.items()}
    raw["sweep"] = {**TINY["sweep"], **sweep_section}
    return config_module.from_dict(raw)


pytestmark = pytest.mark.usefixtures("local_ray")


def test_grid_sweep_writes_one_row_per_trial_matching_what_each_trial_ran(tmp_path):
    config = make()
    frame = sweep.run(config, results_root=tmp_path / "results", storage=str(tmp_path / "ray"))
    written = pd.read_csv(tmp_path / "results" / "tiny" / "trials.csv")
    assert len(written) == 4 and set(written["status"]) == {"completed"}
    assert sorted(zip(written["optimizer.radius"], written["optimizer.hessian_coef"])) == [(0.0, 0.0), (0.0, 1.0), (0.1, 0.0), (0.1, 1.0)]
    for column in [*trials.COLUMNS, "trial_id", "status", "test_acc", "val_acc", "ptq_acc_4bit", "grad_evals"]:
        assert column in written.columns, column
    # each row's metrics are exactly those of the same configuration trained here, in-process
    for _, row in written.iterrows():
        params = {"optimizer.radius": row["optimizer.radius"], "optimizer.hessian_coef": row["optimizer.hessian_coef"], "train.seed": 0}
        direct = run_trial(config_module.for_trial(config, params))
        assert row["test_acc"] == pytest.approx(direct["test_acc"]) and row["grad_evals"] == direct["grad_evals"]
    assert len(frame) == 4


def test_asha_stops_clearly_worse_configurations_early(tmp_path):
    raw = {**TINY, "train": {**TINY["train"], "epochs": 4}}
    raw["sweep"] = {"space": {"train.lr": [0.1, 1e-6, 1e-6, 1e-6]}, "seeds": [0], "scheduler": "asha",
                    "asha": {"grace_period": 1, "reduction_factor": 2}, "max_concurrent_trials": 1}
    frame = sweep.run(config_module.from_dict(raw), results_root=tmp_path / "r", storage=str(tmp_path / "ray"))
    assert len(frame) == 4
    assert (frame["status"] == "stopped").sum() >= 1
    assert frame.loc[frame["train.lr"] == 0.1, "status"].item() == "completed"


def test_asha_stops_a_configuration_at_one_rung_at_every_seed_never_one_seed_for_another(tmp_path):
    """Rungs compare configurations by their seeds' mean (hero_bench.sweep.rungs): a configuration runs
    to the end at every seed, or is stopped at one rung at every seed. Ray's own ASHA compares trials:
    here it let lr 0.1 complete at seed 0 and stopped its seeds 1 and 2 at the rung of epoch 4, each
    a little worse than seed 0 there, so the best configuration was never complete."""
    config = config_module.from_dict(experiment(train={"epochs": 6}, sweep={
        "space": {"train.lr": [0.1, 0.01, 1e-6]}, "seeds": [0, 1, 2], "metric": "train_loss", "mode": "min",
        "scheduler": "asha", "asha": {"grace_period": 1, "reduction_factor": 2}, "max_concurrent_trials": 1}))
    frame = sweep.run(config, results_root=tmp_path / "r", storage=str(tmp_path / "ray"))
    assert len(frame) == 9
    for lr, seeds in frame.groupby("train.lr"):
        assert sorted(seeds["train.seed"]) == [0, 1, 2]
        assert set(seeds["status"]) in ({"completed"}, {"stopped"}), seeds[["train.seed", "status", "epochs_done"]]
        assert seeds["epochs_done"].nunique() == 1  # one trial at a time: every seed stopped where its configuration was
    assert set(frame.loc[frame["train.lr"] == 0.1, "status"]) == {"completed"} and (frame["status"] == "stopped").any()


def test_an_existing_sweep_is_not_overwritten_without_being_told(tmp_path):
    config = make(space={"optimizer.radius": [0.0]})
    sweep.run(config, results_root=tmp_path / "r", storage=str(tmp_path / "ray"))
    before = (tmp_path / "r" / "tiny" / "trials.csv").read_text()
    with pytest.raises(ConfigError, match="--resume to continue it or --overwrite"):
        sweep.run(config, results_root=tmp_path / "r", storage=str(tmp_path / "ray"))
    assert (tmp_path / "r" / "tiny" / "trials.csv").read_text() == before
    frame = sweep.run(config, results_root=tmp_path / "r", storage=str(tmp_path / "ray2"), overwrite=True)
    assert len(frame) == 1


@pytest.mark.parametrize("tensorboard", [False, True])
def test_ray_writes_its_per_trial_result_files_and_tensorboard_events_only_on_request(tmp_path, tensorboard):
    raw = {**TINY, "tracking": {"wandb": "disabled", "tensorboard": tensorboard}}
    raw["sweep"] = {**TINY["sweep"], "space": {"optimizer.radius": [0.0]}}
    sweep.run(config_module.from_dict(raw), results_root=tmp_path / "r", storage=str(tmp_path / "ray"))
    (trial_dir,) = (tmp_path / "ray" / "tiny").glob("trainable_*")
    progress = pd.read_csv(trial_dir / "progress.csv")
    assert list(progress["epoch"]) == [1, 2] and len((trial_dir / "result.json").read_text().splitlines()) == 2
    assert bool(list(trial_dir.glob("events.out.tfevents.*"))) == tensorboard


def test_short_epochs_reach_ray_in_batches_and_history_and_wandb_still_get_every_epoch(tmp_path, monkeypatch):
    """Epochs of milliseconds are reported to Ray where it needs them, at the checkpoints (3, 6) and
    ASHA's rungs (2, 4), and the others travel with the next report (hero_bench.sweep.trainable): Ray
    sees fewer reports than epochs, while history.csv and the trial's W&B run hold every epoch, with
    the values the same trial reports epoch by epoch in-process."""
    import wandb

    raw = experiment(name="batched", train={"epochs": 6}, tracking={"wandb": "offline"}, sweep={
        "space": {"train.lr": [0.05]}, "checkpoint_every": 3, "scheduler": "asha", "asha": {"grace_period": 2, "reduction_factor": 2}})
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    wandb.teardown()
    try:
        assert cli.main(["sweep", str(tmp_path / "exp.yaml"), "--results", str(tmp_path / "r"), "--storage", str(tmp_path / "ray")]) == 0
    finally:
        wandb.teardown()
    (trial_dir,) = (tmp_path / "ray" / "batched").glob("trainable_*")
    reports = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    at_once = [r["epoch"] for r in reports]
    assert {2, 3, 4, 6} <= set(at_once) and 5 not in at_once, at_once  # epoch 5 is due nowhere: it waits for 6
    assert [e["epoch"] for r in reports for e in [*r["earlier_epochs"], r]] == [1, 2, 3, 4, 5, 6]

    in_process = []
    run_trial(config_module.for_trial(config_module.from_dict(raw), {"train.lr": 0.05, "train.seed": 0}),
              report=lambda metrics, state: in_process.append(metrics["val_acc"]))
    history = pd.read_csv(tmp_path / "r" / "batched" / "history.csv", dtype={"trial_id": str})
    assert list(history["epoch"]) == [1, 2, 3, 4, 5, 6] and list(history["val_acc"]) == pytest.approx(in_process)
    (run,) = read_runs(tmp_path / "r" / "batched" / "wandb" / "wandb")[f"batched-{history['trial_id'][0]}"]
    assert [h["_step"] for h in run["history"]] == [1, 2, 3, 4, 5, 6]
    assert [h["val_acc"] for h in run["history"]] == pytest.approx(in_process)


def test_one_sweep_tunes_brackets_then_confirms_and_resumes_its_stages(tmp_path):
    raw = experiment(name="staged", sweep={
        # a list-valued key that differs between the grids: the stages are decided from trials.csv's text of it
        "space": [{"optimizer.name": ["sgd"], "train.lr": [0.01, 0.02, 0.04], "model.args.hidden": [[16]]},
                  {"optimizer.name": ["sam"], "train.lr": [0.01, 0.02, 0.04], "optimizer.radius": [0.05], "model.args.hidden": [[8]]}],
        "seeds": [0, 1], "confirm_seeds": [5, 6], "bracket": 1, "checkpoint_every": 2},
        hypotheses=[{"method": "sam", "baseline": "sgd"}])
    config = config_module.from_dict(raw)
    results = tmp_path / "r" / "staged"
    frame = sweep.run(config, results_root=tmp_path / "r", storage=str(tmp_path / "ray"))
    stages = frame.groupby("stage")["trial_id"].count().to_dict()
    # 6 configurations x 2 seeds; both families end at their largest lr: one step past it each; 2 choices x 2 seeds
    assert stages == {"tune": 12, "bracket-1": 4, "confirm": 4}
    assert set(frame.loc[frame["stage"] == "bracket-1", "train.lr"]) == {0.08}
    confirmed = frame[frame["stage"] == "confirm"]
    assert set(confirmed["train.seed"]) == {5, 6} and set(frame.loc[frame["stage"] != "confirm", "train.seed"]) == {0, 1}
    history = pd.read_csv(results / "history.csv", dtype={"trial_id": str})
    assert len(history) == len(history.drop_duplicates(["trial_id", "epoch"])) == frame["epochs_done"].sum()
    assert set(history["trial_id"]) == set(frame["trial_id"])
    # --resume after the confirmation trials were lost runs exactly those again, as sweep.json recorded them
    kept = pd.read_csv(results / "trials.csv", dtype={"trial_id": str})
    kept[kept["stage"] != "confirm"].to_csv(results / "trials.csv", index=False)
    again = sweep.run(config, results_root=tmp_path / "r", storage=str(tmp_path / "ray"), resume=True)
    before, after = (f[f["stage"] == "confirm"].sort_values(["optimizer.name", "train.seed"]) for f in (frame, again))
    assert len(again) == 20 and list(after["test_acc"]) == list(before["test_acc"])
    written, _ = outputs.write(results)
    paired = pd.read_csv(results / "comparisons.csv")
    claim = paired[paired["hypothesis"] != ""].iloc[0]
    assert (claim["method"], claim["baseline"], claim["seeds"], claim["role"]) == ("sam", "sgd", "confirm", "confirmatory")
