"""Searches with seeds: random, quasirandom and Optuna draw configurations once and run each at every
seed. The draws and the Optuna searcher on their own (no Ray), then real sweeps through a local Ray
(started once for this module, always shut down), interrupted by Ctrl-C and resumed from plain files."""
import json
import re
import signal

import numpy as np
import optuna
import pandas as pd
import pytest
import ray
from ray import tune

from hero_bench import config as config_module
from hero_bench import sweep, trials
from hero_bench.errors import ConfigError, Interrupted
from hero_bench.results import leaderboard, outputs
from hero_bench.sweep import folder, search, study
from hero_bench.sweep.space import CONTINUES, POINT, cells
from test_lifecycle import plant_code
from tiny import experiment

LR = {"dist": "loguniform", "low": 0.01, "high": 0.3}
SEEDS = [0, 1, 2]


def make(search_name, space, num_samples=1, **sweep_section):
    return config_module.from_dict(experiment(
        data={"args": {"num_samples": 1024, "input_shape": [1, 4, 4], "num_classes": 3}}, train={"epochs": 4},
        sweep={"space": space, "search": search_name, "num_samples": num_samples, "seeds": SEEDS, **sweep_section}))


FAMILIES = {"optimizer.name": ["sgd", "sam"], "train.lr": LR}  # two grid points, the learning rate drawn at each


# ------------------------------------------------------------------------- draws, no Ray needed

@pytest.mark.parametrize("name", search.DRAWN)
def test_the_same_file_draws_the_same_distinct_configurations_and_no_seed(name):
    space = {"optimizer.name": ["sgd", "sam"], "train.lr": LR, "train.momentum": {"dist": "choice", "values": [0.0, 0.5, 0.9]},
             "train.epochs": {"dist": "randint", "low": 1, "high": 4}}
    draws = search.draw(make(name, space, num_samples=5).sweep)
    assert draws == search.draw(make(name, space, num_samples=5).sweep)  # the file alone decides
    assert draws != search.draw(make(name, space, num_samples=5, search_seed=1).sweep)
    assert json.loads(json.dumps(draws)) == draws  # plain data, as sweep.json stores it
    assert [d["optimizer.name"] for d in draws] == ["sgd"] * 5 + ["sam"] * 5  # num_samples at each grid point
    for point in (draws[:5], draws[5:]):
        assert len({json.dumps(d, sort_keys=True) for d in point}) == 5
    assert all(set(d) == {"optimizer.name", "train.lr", "train.momentum", "train.epochs"} for d in draws)  # never train.seed
    assert all(0.01 <= d["train.lr"] <= 0.3 and d["train.momentum"] in (0.0, 0.5, 0.9) and d["train.epochs"] in (1, 2, 3)
               for d in draws)
    prepared = search.prepare(make(name, space, num_samples=5))
    assert prepared.draws == draws and prepared.space == {POINT: {"grid_search": draws}, "train.seed": {"grid_search": SEEDS}}


def test_quasirandom_draws_fill_a_range_evenly_where_random_draws_cluster():
    """16 draws of a scrambled Halton sequence put one point in each sixteenth of a range (on a log scale
    for loguniform); 16 independent draws all do so with probability 16!/16^16, about 1e-6."""
    def sixteenths(name):
        draws = search.draw(make(name, {"train.lr": {"dist": "loguniform", "low": 0.001, "high": 1.0}}, num_samples=16).sweep)
        return sorted(int(np.log10(d["train.lr"] / 0.001) / 3 * 16) for d in draws)

    assert sixteenths("quasirandom") == list(range(16))
    assert sixteenths("random") != list(range(16))


def test_a_space_of_choices_is_drawn_without_repeating_a_configuration():
    space = {"train.lr": {"dist": "choice", "values": [0.01, 0.1]}, "train.momentum": {"dist": "choice", "values": [0.0, 0.9]}}
    for name in search.DRAWN:
        draws = search.draw(make(name, space, num_samples=4).sweep)
        assert sorted((d["train.lr"], d["train.momentum"]) for d in draws) == [(0.01, 0.0), (0.01, 0.9), (0.1, 0.0), (0.1, 0.9)]


def test_tuning_budgets_count_the_draws_of_each_family():
    # hero at radius 0 is SGD: which family a draw belongs to is known only once it is drawn
    config = make("random", {"optimizer.name": "hero", "optimizer.radius": {"dist": "choice", "values": [0.0, 0.5]},
                             "optimizer.hessian_coef": 10.0, "train.lr": LR}, num_samples=7)
    radii = [d["optimizer.radius"] for d in search.draw(config.sweep)]
    budgets = search.tuning_budgets(config).set_index("family")
    assert budgets.loc["sgd", "configurations"] == radii.count(0.0) and budgets.loc["hero", "configurations"] == radii.count(0.5)
    assert 0 < radii.count(0.0) < 7 and budgets.loc["hero", "swept"] == ["train.lr"]
    # a grid per family, each drawn num_samples times: the claim protocol's equal budgets
    union = make("quasirandom", [{"optimizer.name": "sgd", "train.lr": LR},
                                 {"optimizer.name": "sam", "optimizer.radius": {"dist": "uniform", "low": 0.01, "high": 1.0}, "train.lr": LR}],
                 num_samples=3)
    budgets = search.tuning_budgets(union)
    assert dict(zip(budgets["family"], budgets["configurations"])) == {"sam": 3, "sgd": 3}
    assert dict(zip(budgets["family"], budgets["swept"])) == {"sam": ["optimizer.radius", "train.lr"], "sgd": ["train.lr"]}


def ask_everything(searcher, results, prefix="t"):
    """Every trial `searcher` suggests (Ray's trial ids `prefix` and a number), each ended at once
    with the result `results(params)` gives."""
    asked = []
    while (params := searcher.suggest(f"{prefix}{len(asked)}")) not in (None, study.TuneSearcher.FINISHED):
        asked.append(params)
        searcher.on_trial_complete(f"{prefix}{len(asked) - 1}", **results(params))
    return asked


def completed(params):
    return {"result": {"epoch": 4, "val_acc": 50.0 + 100 * params[POINT]["train.lr"] + params["train.seed"]}}


def test_optuna_asks_the_same_configurations_from_the_same_file_and_each_at_every_seed(tmp_path):
    config = make("optuna", FAMILIES, num_samples=3)
    asked = [ask_everything(study.Searcher(config, tmp_path / f"{run}.journal"), completed) for run in (1, 2)]
    assert asked[0] == asked[1] and len(asked[0]) == 2 * 3 * 3
    configurations = [json.dumps(p[POINT], sort_keys=True) for p in asked[0]]
    for configuration in set(configurations):
        assert sorted(p["train.seed"] for p, c in zip(asked[0], configurations) if c == configuration) == SEEDS
    assert [p[POINT]["optimizer.name"] for p in asked[0][::3]] == ["sgd", "sam"] * 3  # the studies asked in turn


@pytest.mark.parametrize("statuses, state", [
    (["completed"] * 3, "COMPLETE"), (["completed", "stopped", "completed"], "PRUNED"),
    (["completed", "diverged", "stopped"], "FAIL"), (["completed", "failed", "completed"], "RUNNING"),
])
def test_optuna_is_told_what_the_seeds_of_a_configuration_decide(tmp_path, statuses, state):
    config = make("optuna", {"train.lr": LR})
    searcher = study.Searcher(config, tmp_path / "optuna.journal")
    results = {"completed": {"epoch": 4, "val_acc": 60.0}, "stopped": {"epoch": 1, "val_acc": 30.0},
               "diverged": {"epoch": 2, "status": "diverged", "val_acc": float("nan")}, "failed": {}}
    for index, status in enumerate(statuses):
        params = searcher.suggest(f"t{index}")
        searcher.on_trial_complete(f"t{index}", result={**results[status], "val_acc": results[status].get("val_acc", 0) + index},
                                   error=status == "failed")
    (trial,) = optuna.load_study(study_name="rel [0]", storage=study_storage(tmp_path / "optuna.journal")).trials
    assert trial.state.name == state and trial.params == {"train.lr": params[POINT]["train.lr"]}
    assert [trial.user_attrs[f"seed {s}"]["status"] for s in SEEDS] == statuses
    assert trial.value == (pytest.approx(61.0) if state == "COMPLETE" else None)  # 60, 61, 62: the seeds' mean


def test_a_resumed_optuna_study_asks_on_where_it_stopped_and_never_asks_a_configuration_again(tmp_path):
    config = make("optuna", {"train.lr": LR}, num_samples=4)
    first = study.Searcher(config, tmp_path / "optuna.journal")
    begun = [first.suggest(f"t{i}") for i in range(4)]  # the first configuration's seeds, then the second's first
    first.on_trial_complete("t0", **completed(begun[0]))
    resumed = study.Searcher(config, tmp_path / "optuna.journal")
    assert resumed.open() == [begun[0][POINT], begun[3][POINT]]
    left = [{**begun[i][POINT], "train.seed": begun[i]["train.seed"], CONTINUES: f"t{i}"} for i in (1, 2, 3)]
    left.append({**begun[3][POINT], "train.seed": 1})
    left.append({**begun[3][POINT], "train.seed": 2})
    resumed.backlog = left
    asked = ask_everything(resumed, completed, prefix="r")
    assert [p["train.seed"] for p in asked[:5]] == [1, 2, 0, 1, 2] and asked[0][POINT][CONTINUES] == "t1"
    trials_ = optuna.load_study(study_name="rel [0]", storage=study_storage(tmp_path / "optuna.journal")).trials
    assert [t.state.name for t in trials_] == ["COMPLETE"] * 4 and len({t.params["train.lr"] for t in trials_}) == 4
    assert [t.user_attrs["seed 1"]["trial_id"] for t in trials_[:2]] == ["t1", "r3"]  # a continued trial keeps its id


def test_a_journal_cut_by_a_crash_is_repaired_on_opening(tmp_path):
    """Stopped between the journal's writes: a configuration asked halfway (one of its two values) never
    ran, so it is failed and not counted; one whose seeds had all ended but was not told is told."""
    config = make("optuna", {"train.lr": LR, "train.momentum": {"dist": "uniform", "low": 0.0, "high": 0.9}}, num_samples=3)
    first = study.Searcher(config, tmp_path / "optuna.journal")
    told = ask_everything(first, completed)[0][POINT]  # three configurations, each told
    storage, study_id = first.storage, first.ids[0]
    untold = storage.create_new_trial(study_id)
    storage.set_trial_param(untold, "train.lr", 0.05, study.distribution(cells(config.sweep)[0].distributions["train.lr"]))
    storage.set_trial_param(untold, "train.momentum", 0.5, study.distribution(cells(config.sweep)[0].distributions["train.momentum"]))
    for seed in SEEDS:
        storage.set_trial_user_attr(untold, f"seed {seed}", {"trial_id": f"u{seed}", "status": "completed", "val_acc": 70.0 + seed})
    halfway = storage.create_new_trial(study_id)
    storage.set_trial_param(halfway, "train.lr", 0.02, study.distribution(cells(config.sweep)[0].distributions["train.lr"]))
    asked = study.Searcher(config, tmp_path / "optuna.journal").open()
    assert len(asked) == 4 and asked[0] == told and asked[3] == {"train.lr": 0.05, "train.momentum": 0.5}
    states = [(t.state.name, t.value) for t in optuna.load_study(study_name="rel [0]", storage=study_storage(tmp_path / "optuna.journal")).trials]
    assert states[3:] == [("COMPLETE", 71.0), ("FAIL", None)]


def study_storage(path):
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


@pytest.mark.parametrize("case", ["other draws", "no draws", "no journal"])
def test_resume_refuses_draws_it_did_not_run_and_an_optuna_sweep_without_its_journal(tmp_path, case):
    config = make("optuna" if case == "no journal" else "random", FAMILIES)
    results = tmp_path / "results" / "rel"
    results.mkdir(parents=True)
    marker = {"sweep_id": "s", "storage": str(tmp_path / "ray"), "config": json.loads(json.dumps(config.to_dict()))}
    if case == "other draws":
        marker["draws"] = [{**d, "train.lr": d["train.lr"] / 2} for d in search.draw(config.sweep)]
    folder.write_marker(results, marker)
    (results / "trials.csv").write_text("trial_id,status,data.name,model.name,optimizer.name,optimizer.radius,"
                                        "optimizer.hessian_coef,data.label_noise,train.seed,val_acc,test_acc\n")
    before = sorted(p.name for p in results.iterdir())
    expect = "optuna.journal is missing" if case == "no journal" else \
        f"the configurations this file draws are not those the sweep ran ({results / 'sweep.json'} holds {case.split()[0]}"
    with pytest.raises(ConfigError, match=re.escape(expect)):
        sweep.run(config, results_root=tmp_path / "results", resume=True)
    assert sorted(p.name for p in results.iterdir()) == before and not ray.is_initialized()


# --------------------------------------------------------------------- real sweeps through Ray

class CtrlC(tune.Callback):
    """Ctrl-C (SIGINT to this process, as a terminal sends it) when a trial reports its second epoch
    (a checkpoint) once `finished` trials have ended."""

    def __init__(self, finished):
        self.finished, self.sent = finished, False

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finished -= 1

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.finished <= 0 and result.get("epoch") == 2 and not self.sent:
            self.sent = True
            signal.raise_signal(signal.SIGINT)


def interrupted_then_resumed(config, tmp_path):
    """Run the sweep of `config`, interrupt it, plant code in Ray's storage, resume it; returns the
    trials table before and after, and whether the planted code ran."""
    run = dict(results_root=tmp_path / "results", storage=str(tmp_path / "ray"))
    with pytest.raises(Interrupted):
        sweep.run(config, callbacks=[CtrlC(finished=2)], **run)
    before = pd.read_csv(tmp_path / "results" / "rel" / "trials.csv", dtype={"trial_id": str})
    assert plant_code(tmp_path / "ray" / "rel", tmp_path / "code-ran") >= 3
    after = sweep.run(config, resume=True, **run)
    return before, after, (tmp_path / "code-ran").exists()


def check_every_configuration_at_every_seed(frame, configurations, tmp_path):
    """`frame` (the trials table) runs each configuration (dotted key -> value) once at every seed, no
    more; the leaderboard chooses in every family and compares them seed by seed."""
    assert len(frame) == len(configurations) * len(SEEDS) and frame["trial_id"].is_unique
    assert set(frame["status"]) == {"completed"}
    ran = sorted((r["optimizer.name"], r["train.lr"], r["train.seed"]) for _, r in frame.iterrows())
    assert ran == sorted((c["optimizer.name"], c["train.lr"], s) for c in configurations for s in SEEDS)
    outputs.write(tmp_path / "results" / "rel")
    board = pd.read_csv(tmp_path / "results" / "rel" / "leaderboard.csv")
    assert sorted(board["family"]) == ["sam", "sgd"] and set(board["n_seeds"]) == {3} and set(board["status"]) == {"completed"}
    paired = pd.read_csv(tmp_path / "results" / "rel" / "comparisons.csv")
    assert set(zip(paired["method"], paired["baseline"], paired["n"])) == {("sam", "sgd", 3)}
    assert "synthetic / mlp / label noise 0: " in outputs.summary(tmp_path / "results" / "rel")


def test_a_quasirandom_sweep_runs_every_draw_at_every_seed_and_ranks_every_family(local_ray, tmp_path):
    config = make("quasirandom", FAMILIES)
    frame = sweep.run(config, results_root=tmp_path / "results", storage=str(tmp_path / "ray"))
    stored = json.loads((tmp_path / "results" / "rel" / "sweep.json").read_text())["draws"]
    assert stored == search.draw(config.sweep) and [d["optimizer.name"] for d in stored] == ["sgd", "sam"]
    check_every_configuration_at_every_seed(frame, stored, tmp_path)


def test_an_interrupted_random_sweep_resumes_from_plain_files_running_every_trial_once(local_ray, tmp_path):
    config = make("random", FAMILIES)
    before, after, code_ran = interrupted_then_resumed(config, tmp_path)
    assert 2 <= len(before) < 6 and not code_ran
    check_every_configuration_at_every_seed(after, search.draw(config.sweep), tmp_path)
    assert (after["resumed_from_epoch"] >= 2).any()  # the trial cut short went on from its checkpoint
    same = after.set_index("trial_id").loc[before["trial_id"], ["status", "val_acc", "test_acc"]]
    pd.testing.assert_frame_equal(same.reset_index(), before[["trial_id", "status", "val_acc", "test_acc"]], check_dtype=False)


def test_an_interrupted_optuna_sweep_resumes_from_its_journal_and_each_study_holds_the_seeds_means(local_ray, tmp_path):
    config = make("optuna", FAMILIES)
    before, after, code_ran = interrupted_then_resumed(config, tmp_path)
    assert 2 <= len(before) < 6 and not code_ran
    assert (after["resumed_from_epoch"] >= 2).any()
    storage = study_storage(tmp_path / "results" / "rel" / "optuna.journal")
    configurations = []
    for index, cell in enumerate(cells(config.sweep)):
        (trial,) = optuna.load_study(study_name=study.study_name(config, index, cell), storage=storage).trials
        assert trial.state.name == "COMPLETE" and set(trial.params) == {"train.lr"}  # one trial per configuration, no seed
        configurations.append({**cell.point, **trial.params})
        seeds = after[(after["optimizer.name"] == cell.point["optimizer.name"]) & (after["train.lr"] == trial.params["train.lr"])]
        assert trial.value == pytest.approx(seeds["val_acc"].mean())
        assert sorted(trial.user_attrs[f"seed {s}"]["trial_id"] for s in SEEDS) == sorted(seeds["trial_id"])
    check_every_configuration_at_every_seed(after, configurations, tmp_path)
    chosen = leaderboard.leaderboard(trials.read(tmp_path / "results" / "rel"))
    assert set(chosen["configurations"]) == {1}
