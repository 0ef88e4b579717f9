"""Paired comparisons of the families' chosen configurations: results/<name>/comparisons.csv.

For every group (dataset, model, label noise and its kind) and every pair (method, baseline) of
PAIRS whose two families are both there, the two configurations chosen by validation accuracy
(leaderboard.select_best) are compared seed by seed: trials that share a seed share the validation
split, the initialization, the noisy labels and the batch order. A seed missing (or not completed) in
either arm is dropped from that pair, and `n` says how many were compared. hero_bench.stats gives
the mean difference method − baseline, its 95% t-interval and the paired t-test's p; Holm's
adjustment (`p_holm`) runs over every row of the file. Metrics compared: test_acc,
test_acc_at_best_val and every ptq_drop_{b}bit[_per_channel] the trials have (for a drop, lower is
better). `verdict`: the method is `better` or `worse` than the baseline where p_holm < 0.05, else
`not resolved`; `detectable` is the smallest true difference this n detects with 80% power at the
5% level (unadjusted), given the spread of the differences.
"""
import pandas as pd

from hero_bench import catalog, stats, trials
from hero_bench.results.leaderboard import CONFIG_ID, configuration_ids, group_title
from hero_bench.trials import FAMILY, GROUP_KEYS, SEED, STATUS

# (method, baseline): HERO against SGD, SAM and SGD given HERO's gradient evaluations (3 per step);
# SAM against SGD and SGD with SAM's compute (2 per step); GradNorm likewise.
PAIRS = [("hero", "sgd"), ("hero", "sam"), ("sam", "sgd"), ("hero", "sgd_3x"), ("sam", "sgd_2x"),
         ("gradnorm", "sgd"), ("hero", "gradnorm"), ("gradnorm", "sgd_2x")]
ACCURACIES = ("test_acc", "test_acc_at_best_val")
ALPHA = 0.05
COLUMNS = [*GROUP_KEYS, "metric", "method", "baseline", "n", "mean_diff", "ci95_low", "ci95_high", "p", "p_holm",
           "detectable", "verdict"]


def compared_metrics(df):
    """The metrics compared, in the catalog's order: accuracies, then PTQ drops from most to fewest bits."""
    return [entry.column for entry in catalog.entries(df.columns, compared=True)]


def lower_is_better(metric):
    return catalog.describe(metric).metric.higher_is_better is False


def comparisons(df, chosen):
    """The comparisons table of a trials table `df` and its chosen configurations (select_best of its
    per_config), with the columns of COLUMNS."""
    df = trials.with_added_columns(df).assign(**{CONFIG_ID: configuration_ids(df)})
    done = df[df[STATUS] == "completed"]
    metrics = compared_metrics(df)
    rows = []
    for group, chosen_group in chosen.groupby(GROUP_KEYS, dropna=False, sort=True):
        config_of = dict(zip(chosen_group[FAMILY], chosen_group[CONFIG_ID]))
        for method, baseline in PAIRS:
            if method not in config_of or baseline not in config_of:
                continue
            a, b = (done[done[CONFIG_ID] == config_of[f]].set_index(SEED) for f in (method, baseline))
            seeds = a.index.intersection(b.index).sort_values()
            for metric in metrics:
                d = stats.paired_difference(a.loc[seeds, metric], b.loc[seeds, metric])
                rows.append({**dict(zip(GROUP_KEYS, group)), "metric": metric, "method": method, "baseline": baseline,
                             "n": d["n"], "mean_diff": d["mean"], "ci95_low": d["low"], "ci95_high": d["high"],
                             "p": d["p"], "detectable": stats.detectable_effect(d["sd"], d["n"], ALPHA)})
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("p_holm", "verdict")])
    table["p_holm"] = stats.holm(table["p"])
    table["verdict"] = [verdict(row) for row in table.to_dict("records")]
    return table[COLUMNS]


def verdict(row):
    """`better`/`worse` (the method against the baseline, significant after Holm), else `not resolved`."""
    if not row["p_holm"] < ALPHA:
        return "not resolved"
    gain = -row["mean_diff"] if lower_is_better(row["metric"]) else row["mean_diff"]
    return "better" if gain > 0 else "worse"


def markdown(table, heading="##"):
    """The comparisons as markdown, one table per group."""
    if table.empty:
        return ""
    out = [f"{heading} Paired comparisons\n",
           "Method − baseline per seed, between the configurations chosen by validation accuracy: mean "
           "[95% t-interval], paired t-test p and its Holm adjustment over the whole table; a drop "
           "(`ptq_drop_*`) is better when lower. `detectable`: the smallest difference this n finds with "
           "80% power.\n"]
    for group, rows in table.groupby(GROUP_KEYS, dropna=False, sort=True):
        out.append(f"{heading}# {group_title(*group)}\n")
        out.append("| metric | method − baseline | n | difference [95% CI] | p | p (Holm) | detectable | verdict |")
        out.append("|---|---|---|---|---|---|---|---|")
        for r in rows.to_dict("records"):
            interval = f"{r['mean_diff']:+.2f} [{r['ci95_low']:+.2f}, {r['ci95_high']:+.2f}]"
            out.append(f"| {r['metric']} | {r['method']} − {r['baseline']} | {r['n']} | {interval} | {r['p']:.3g} "
                       f"| {r['p_holm']:.3g} | {r['detectable']:.2f} | {r['verdict']} |")
        out.append("")
    return "\n".join(out)
