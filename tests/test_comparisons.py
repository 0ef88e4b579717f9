"""Comparisons of the chosen configurations from a hand-made trials table whose per-seed values are
known: the choice (validation tie, grid edge), the pairing (a missing seed), the statistics (scipy)."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from hero_bench.results import comparisons, leaderboard
from hero_bench.stats import holm

BASE = {"name": "hand", "data.name": "digits", "model.name": "mlp", "data.label_noise": 0.0,
        "data.label_noise_kind": "uniform", "optimizer.adaptive": True, "optimizer.hvp": "exact",
        "optimizer.hessian_every": 1, "train.epochs": 3, "train.compute_factor": 1}


def trial(method, radius, coef, lr, seed, val, test, drop, grad_evals=30, status="completed"):
    return {**BASE, "trial_id": f"{method}-{radius}-{coef}-{lr}-{seed}", "status": status,
            "optimizer.name": method, "optimizer.radius": radius, "optimizer.hessian_coef": coef, "train.lr": lr,
            "train.seed": seed, "val_acc": val, "test_acc": test, "test_acc_at_best_val": test - 1,
            "ptq_drop_4bit": drop, "grad_evals": grad_evals}


def hand_made():
    rows = []
    for seed in range(6):
        # sgd: lr 0.1 wins on validation; it is the largest lr tried, an edge of the grid
        rows.append(trial("sgd", 0.0, 0.0, 0.05, seed, 80.0, 85.0, 5.0))
        rows.append(trial("sgd", 0.0, 0.0, 0.1, seed, 82.0, 90.0 + seed, 4.0 + seed))
        # hero: gamma 1 and gamma 10 tie exactly on validation; the cheaper one (gamma 10) is chosen
        rows.append(trial("hero", 0.5, 1.0, 0.1, seed, 83.0, 70.0, 9.0, grad_evals=90))
        hero_test = [91.0, 93.0, 93.0, 95.0, 92.0, 99.0][seed]
        rows.append(trial("hero", 0.5, 10.0, 0.1, seed, 83.0, hero_test, [2.0, 3.0, 4.0, 6.0, 5.0, 1.0][seed],
                          grad_evals=60, status="failed" if seed == 5 else "completed"))  # seed 5 is missing from this arm
    return pd.DataFrame(rows)


def chosen_of(df):
    return leaderboard.select_best(leaderboard.per_config(df))


def test_the_choice_breaks_a_validation_tie_by_cost_and_flags_the_tie_and_the_grid_edge():
    df = hand_made()
    df.loc[(df["optimizer.name"] == "hero") & (df["train.seed"] == 5), "status"] = "completed"  # all seeds done
    chosen = chosen_of(df).set_index("family")
    assert chosen.loc["sgd", "train.lr"] == 0.1 and chosen.loc["sgd", "edge"] == "train.lr (highest)"
    assert chosen.loc["sgd", "tied"] == 1 and chosen.loc["sgd", "configurations"] == 2
    assert chosen.loc["hero", "optimizer.hessian_coef"] == 10.0 and chosen.loc["hero", "tied"] == 2
    assert chosen.loc["hero", "edge"] == "optimizer.hessian_coef (highest)"


def test_paired_differences_drop_a_missing_seed_and_match_scipy():
    df = hand_made()
    df.loc[df["status"] == "failed", "status"] = "completed"
    df.loc[(df["optimizer.name"] == "hero") & (df["optimizer.hessian_coef"] == 1.0), "val_acc"] = 60.0
    chosen = chosen_of(df)
    missing = df[~((df["optimizer.name"] == "hero") & (df["train.seed"] == 5))]  # seed 5 is gone from hero's arm
    claims = [{"method": "hero", "baseline": "sgd", "metric": m, "direction": d}
              for m, d in (("test_acc", "greater"), ("ptq_drop_4bit", "less"))]
    table = comparisons.comparisons(missing, chosen, claims)
    row = table[(table["metric"] == "test_acc") & (table["method"] == "hero")].iloc[0]
    hero, sgd = np.array([91.0, 93.0, 93.0, 95.0, 92.0]), np.array([90.0, 91.0, 92.0, 93.0, 94.0])
    reference = scipy_stats.ttest_rel(hero, sgd)
    interval = reference.confidence_interval(0.95)
    assert (row["baseline"], row["n"], row["seeds"]) == ("sgd", 5, "tune")
    assert row["mean_diff"] == pytest.approx(4 / 5) and row["p"] == pytest.approx(reference.pvalue)
    assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((interval.low, interval.high))
    declared = table[table["hypothesis"] != ""]
    assert list(declared["metric"]) == ["test_acc", "ptq_drop_4bit"]
    assert list(declared["p_holm"]) == pytest.approx(list(holm(declared["p"])))  # Holm over the declared rows only
    assert table.loc[table["hypothesis"] == "", "p_holm"].isna().all()
    assert list(table["metric"]) == ["test_acc", "test_acc_at_best_val", "ptq_drop_4bit"]  # one pair: hero − sgd
    drop = table[table["metric"] == "ptq_drop_4bit"].iloc[0]
    assert drop["mean_diff"] == pytest.approx(np.mean([2 - 4, 3 - 5, 4 - 6, 6 - 7, 5 - 8]))  # lower drops: hero better
    assert list(table.columns) == comparisons.COLUMNS


@pytest.mark.parametrize("hypothesis, mean_diff, p_holm, n, sd, verdict", [
    ("method > baseline", 1.0, 0.01, 10, 1.0, "supported"), ("method > baseline", -1.0, 0.01, 10, 1.0, "contradicted"),
    ("method > baseline", 1.0, 0.2, 10, 1.0, "not resolved"), ("method < baseline", -3.0, 0.001, 10, 1.0, "supported"),
    ("method < baseline", 3.0, 0.001, 10, 1.0, "contradicted"), ("method > baseline", 1.0, 0.001, 4, 1.0, "n too small"),
    ("method > baseline", 1.0, np.nan, 10, 0.0, "no variance"), ("", 1.0, np.nan, 10, 1.0, ""),
])
def test_the_verdict_reads_the_claimed_direction(hypothesis, mean_diff, p_holm, n, sd, verdict):
    row = {"hypothesis": hypothesis, "mean_diff": mean_diff, "p_holm": p_holm, "n": n, "sd": sd}
    assert comparisons.verdict(row) == verdict
