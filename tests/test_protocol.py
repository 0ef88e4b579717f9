"""The confirmatory protocol on hand-made trials tables whose answers are known: Holm over the declared
hypotheses only, verdicts from the confirmation seeds alone, no p without variance or pairs, the
detectable effect at Holm's first step, the stability of a choice, and bracketing."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from hero_bench import config as config_module
from hero_bench import stats, trials
from hero_bench.results import comparisons, leaderboard
from hero_bench.sweep import stages
from hero_bench.sweep.space import TrialConfigs, points, search_space
from tiny import experiment

BASE = {"name": "hand", "data.name": "digits", "model.name": "mlp", "data.label_noise": 0.0,
        "data.label_noise_kind": "uniform", "optimizer.adaptive": True, "optimizer.hvp": "exact",
        "optimizer.hessian_every": 1, "train.epochs": 3, "train.compute_factor": 1, "optimizer.radius": 0.0,
        "optimizer.hessian_coef": 0.0, "train.lr": 0.1}
HERO = {"optimizer.name": "hero", "optimizer.radius": 0.5, "optimizer.hessian_coef": 1.0}
SGD = {"optimizer.name": "sgd"}
# hero − sgd on test_acc: mean 1, sd 0.9 over 6 seeds: p 0.04 alone, not below 0.05 in a family of 6
GAINS = [1.0, 2.2, -0.2, 1.6, 0.1, 1.3]


def trial(arm, seed, stage="tune", **metrics):
    values = {"val_acc": 90.0, "test_acc": 90.0, "test_acc_at_best_val": 90.0, "ptq_drop_4bit": 5.0, "grad_evals": 30}
    return {**BASE, **arm, "trial_id": f"{arm['optimizer.name']}-{stage}-{seed}", "status": "completed", "stage": stage,
            "train.seed": seed, **values, **metrics}


def table(gains=GAINS, stage="tune", seeds=range(6)):
    rows = []
    for seed, gain in zip(seeds, gains):
        rows.append(trial(SGD, seed, stage, ptq_drop_4bit=5.0 + seed))
        rows.append(trial(HERO, seed, stage, test_acc=90.0 + gain, test_acc_at_best_val=90.0 + 0.3 * (seed % 3),
                          ptq_drop_4bit=5.0 + seed + 0.5 * (seed % 2)))
    return pd.DataFrame(rows)


def compare(df, hypotheses=()):
    chosen = leaderboard.select_best(leaderboard.per_config(trials.tuning(df)))
    return comparisons.comparisons(df, chosen, hypotheses).set_index(["metric", "method", "baseline"])


HERO_BEATS_SGD = {"method": "hero", "baseline": "sgd", "metric": "test_acc", "direction": "greater", "groups": "all"}


def test_holm_runs_over_the_declared_hypotheses_only():
    df = table()
    alone = compare(df, [HERO_BEATS_SGD])
    row = alone.loc[("test_acc", "hero", "sgd")]
    p = scipy_stats.ttest_rel(90.0 + np.array(GAINS), np.full(6, 90.0)).pvalue
    assert row["p"] == pytest.approx(p) and 0.01 < p < 0.05
    assert row["hypothesis"] == "method > baseline" and row["p_holm"] == pytest.approx(p) and row["verdict"] == "supported"
    # the exploratory rows keep their unadjusted p, get no Holm value and no verdict word
    exploratory = alone[alone["hypothesis"] == ""]
    assert len(exploratory) == 2 and exploratory["p_holm"].isna().all() and set(exploratory["verdict"]) == {""}
    # over every row of the file (the old family) the same difference would not be resolved
    assert stats.holm(alone["p"].fillna(1.0))[0] > 0.05
    # a second declared hypothesis joins the family and changes the adjustment
    both = compare(df, [HERO_BEATS_SGD, {**HERO_BEATS_SGD, "metric": "ptq_drop_4bit", "direction": "less"}])
    drop = both.loc[("ptq_drop_4bit", "hero", "sgd")]
    assert list(both.loc[[("test_acc", "hero", "sgd"), ("ptq_drop_4bit", "hero", "sgd")], "p_holm"]) == pytest.approx(
        list(stats.holm([row["p"], drop["p"]])))


def test_verdicts_come_from_the_confirmation_seeds_alone():
    tuned = table()  # on the tuning seeds hero is better
    confirmed = table(gains=[-1.0, -2.2, 0.2, -1.6, -0.1, -1.3], stage="confirm", seeds=range(10, 16))
    row = compare(pd.concat([tuned, confirmed]), [HERO_BEATS_SGD]).loc[("test_acc", "hero", "sgd")]
    assert row["seeds"] == "confirm" and row["role"] == "confirmatory" and row["n"] == 6
    assert row["mean_diff"] == pytest.approx(-1.0) and row["verdict"] == "contradicted"
    tuned_only = compare(tuned, [HERO_BEATS_SGD]).loc[("test_acc", "hero", "sgd")]
    assert tuned_only["seeds"] == "tune" and tuned_only["role"] == "exploratory"


def test_confirmation_seeds_must_be_fresh():
    with pytest.raises(config_module.ConfigError, match="sweep.confirm_seeds must be fresh seeds, not in sweep.seeds: 1"):
        config_module.from_dict(experiment(sweep={"seeds": [0, 1], "confirm_seeds": [1, 2]}))


def test_no_p_and_no_verdict_without_variance_or_enough_pairs():
    same = compare(table(gains=[0.28] * 6), [HERO_BEATS_SGD]).loc[("test_acc", "hero", "sgd")]
    assert math.isnan(same["p"]) and math.isnan(same["p_holm"]) and same["verdict"] == "no variance"
    few = compare(table(gains=GAINS[:4], seeds=range(4)), [HERO_BEATS_SGD]).loc[("test_acc", "hero", "sgd")]
    assert few["n"] == 4 and math.isnan(few["p"]) and few["verdict"] == "n too small"


def test_detectable_is_the_effect_found_with_80_percent_power_at_alpha_over_m():
    hypotheses = [HERO_BEATS_SGD, {**HERO_BEATS_SGD, "metric": "test_acc_at_best_val"},
                  {**HERO_BEATS_SGD, "metric": "ptq_drop_4bit", "direction": "less"}]
    table_ = compare(table(), hypotheses)
    row = table_.loc[("test_acc", "hero", "sgd")]
    sd, n = np.std(GAINS, ddof=1), 6
    by_hand = (scipy_stats.t.ppf(1 - 0.05 / 3 / 2, n - 1) + scipy_stats.t.ppf(0.8, n - 1)) * sd / math.sqrt(n)
    assert row["detectable"] == pytest.approx(by_hand)
    # an exploratory row's level is the unadjusted 5%
    assert stats.detectable_effect(sd, n, 0.05) < by_hand


def test_selection_stability_is_the_share_of_seed_resamples_that_choose_again():
    rows = []
    for seed, (a, b) in enumerate([(95.0, 80.0), (80.0, 81.0)]):  # a wins seed 0 by far, loses seed 1 narrowly
        rows.append(trial({**SGD, "train.lr": 0.1}, seed, val_acc=a))
        rows.append({**trial({**SGD, "train.lr": 0.2}, seed, val_acc=b), "trial_id": f"b-{seed}"})
    df = pd.DataFrame(rows)
    configs = leaderboard.per_config(df)
    chosen = leaderboard.select_best(configs)
    assert chosen["train.lr"].tolist() == [0.1]
    draws = np.random.default_rng(0).integers(0, 2, size=(1000, 2))
    expected = np.mean(~(draws == 1).all(axis=1))  # only a resample of seed 1 twice chooses lr 0.2
    assert leaderboard.selection_stability(df, configs, chosen) == [pytest.approx(expected)]
    assert 0.7 < expected < 0.8
    board = leaderboard.leaderboard(df)
    assert board["stability"].tolist() == [pytest.approx(expected)]
    assert "unstable (0.7" in leaderboard.markdown_tables(board)


BRACKETED = experiment(
    optimizer={"name": "sgd"},
    sweep={"space": [{"optimizer.name": ["sgd"], "train.lr": [0.01, 0.02, 0.04], "train.weight_decay": [1e-4, 1e-3]},
                     {"optimizer.name": ["sam"], "train.lr": [0.01, 0.02, 0.04], "optimizer.radius": [0.05, 0.1]}],
           "seeds": [0, 1], "bracket": 1, "confirm_seeds": [5]})


def sweep_table(config, val_acc):
    """The trials table of the grid's trials, with `val_acc(point)` as each one's validation accuracy."""
    configs = TrialConfigs(config)
    grid = points(search_space(config), 1)
    rows = [trials.row(f"t{i}", configs.get(p), {k: v for k, v in p.items()}, {"epoch": 2, "val_acc": val_acc(p),
                                                                               "test_acc": 80.0, "grad_evals": 10})
            for i, p in enumerate(grid)]
    return configs, grid, trials.table(rows)


def test_bracketing_extends_the_axis_where_the_choice_sits_at_an_end_and_keeps_budgets_equal():
    config = config_module.from_dict(BRACKETED)

    def val_acc(p):  # sgd: best at the largest lr and the largest weight decay; sam: inside its lr grid
        if p["optimizer.name"] == "sgd":
            return 80 + 100 * p["train.lr"] + 1000 * p["train.weight_decay"]
        return 90 - abs(p["train.lr"] - 0.02) * 100 + p["optimizer.radius"]

    configs, grid, df = sweep_table(config, val_acc)
    stage = stages.next_stage(config, configs, grid, [], df)
    assert stage.name == "bracket-1"
    new = {}
    for point in stage.points:
        new.setdefault(point["optimizer.name"], []).append({k: v for k, v in point.items() if k != "train.seed"})
    sgd = [dict(t) for t in {tuple(sorted(p.items())) for p in new["sgd"]}]
    sam = [dict(t) for t in {tuple(sorted(p.items())) for p in new["sam"]}]
    # sgd sits at the top of both its axes: one grid step past each (geometric: x2 for lr, x10 for weight decay)
    assert sorted((p["train.lr"], p["train.weight_decay"]) for p in sgd) == [(0.04, 0.01), (0.08, 0.001)]
    # sam sits inside its lr grid but at the top of its radius: one step past that, and a midpoint of lr
    assert sorted((p["train.lr"], p["optimizer.radius"]) for p in sam) == [(0.0141421, 0.1), (0.02, 0.2)]
    assert len(new["sgd"]) == len(new["sam"]) == 2 * len(config.sweep.seeds)  # equal budgets, every tuning seed
    # after the round, the choice is confirmed at the confirmation seeds
    done = [stage]
    more = stages.next_stage(config, configs, grid, done, df)
    assert more.name == "confirm" and {p["train.seed"] for p in more.points} == {5} and len(more.points) == 2
