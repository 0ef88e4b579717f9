"""Paired comparisons of the families' chosen configurations: results/<name>/comparisons.csv.

For every group (dataset, model, label noise and its kind) and every pair (method, baseline) of PAIRS
or of the experiment's hypotheses whose two families were both chosen (leaderboard.select_best, on
the tuning stages), the two configurations are compared seed by seed on every compared metric of
the catalog (test_acc, test_acc_at_best_val, every ptq_drop_*) and every hypothesis's metric. Trials
that share a seed share the validation split, the initialization, the noisy labels and the batch
order. The seeds are the confirmation seeds where the sweep ran both configurations on them (`seeds`
= confirm), else the tuning seeds that chose them (`seeds` = tune: selection-biased, exploratory). A
seed missing (or not completed) in either arm is dropped, and `n` says how many were compared.
hero_bench.stats gives the mean difference method − baseline, its 95% t-interval and the paired
t-test's p.

The confirmatory family is the hypotheses declared in the experiment before it ran (`hypotheses:`,
one row per matching group; `hypothesis` names the claimed direction): Holm's adjustment (`p_holm`)
runs over exactly those rows, and only they get a verdict: `supported` (significant after Holm, in
the claimed direction), `contradicted` (significant, opposite), `not resolved`; a hypothesis tested
on tuning seeds is marked `exploratory` in `role`. Every other row is exploratory: its unadjusted p,
no verdict word. No comparison reports a p where the test cannot be trusted: `n too small` below
MIN_PAIRS pairs, `no variance` when every pair differs by the same amount. `detectable`: the smallest
true difference the test finds with 80% power at the level its verdict uses — α/m at Holm's first
step for a family of m hypotheses, α for an exploratory row — given the spread of the differences.
"""
import numpy as np
import pandas as pd

from hero_bench import catalog, stats, trials
from hero_bench.results.leaderboard import CONFIG_ID, configuration_ids, group_title
from hero_bench.trials import FAMILY, GROUP_KEYS, SEED, STATUS

# (method, baseline): HERO against SGD, SAM and SGD given HERO's gradient evaluations (3 per step);
# SAM against SGD and SGD with SAM's compute (2 per step); GradNorm likewise.
PAIRS = [("hero", "sgd"), ("hero", "sam"), ("sam", "sgd"), ("hero", "sgd_3x"), ("sam", "sgd_2x"),
         ("gradnorm", "sgd"), ("hero", "gradnorm"), ("gradnorm", "sgd_2x")]
ALPHA = 0.05
MIN_PAIRS = 5  # fewer pairs than this give no p and no verdict
COLUMNS = [*GROUP_KEYS, "metric", "method", "baseline", "seeds", "n", "mean_diff", "ci95_low", "ci95_high", "p",
           "hypothesis", "role", "p_holm", "detectable", "verdict"]
EXPECTED = {"greater": "method > baseline", "less": "method < baseline"}


def compared_metrics(df):
    """The metrics compared, in the catalog's order: accuracies, then PTQ drops from most to fewest bits."""
    return [entry.column for entry in catalog.entries(df.columns, compared=True)]


def lower_is_better(metric):
    return catalog.describe(metric).metric.higher_is_better is False


def _matches(groups, group):
    """Whether a hypothesis's `groups` ("all" or {group key: value or list}) selects `group`."""
    if groups == "all":
        return True
    values = dict(zip(GROUP_KEYS, group))
    return all(trials.canonical(values[key]) in {trials.canonical(v) for v in (wanted if isinstance(wanted, list) else [wanted])}
               for key, wanted in groups.items())


def _arms(df, chosen_group, method, baseline):
    """(seeds, a, b): the completed trials of the two chosen configurations by seed, on the confirmation
    seeds where both ran there, else on the tuning seeds."""
    config_of = dict(zip(chosen_group[FAMILY], chosen_group[CONFIG_ID]))
    confirmed = df[df[trials.STAGE] == trials.CONFIRM]
    for seeds, rows in (("confirm", confirmed), ("tune", trials.tuning(df))):
        a, b = (rows[rows[CONFIG_ID] == config_of[f]].set_index(SEED) for f in (method, baseline))
        if len(a) and len(b):
            return seeds, a, b
    return "tune", a, b


def comparisons(df, chosen, hypotheses=()):
    """The comparisons table of a trials table `df` (every stage), its chosen configurations (select_best
    of the tuning stages' per_config) and the experiment's `hypotheses` (mappings with method, baseline,
    metric, direction, groups), with the columns of COLUMNS."""
    df = trials.with_added_columns(df).assign(**{CONFIG_ID: configuration_ids(df)})
    done = df[df[STATUS] == "completed"]
    metrics = compared_metrics(df)
    rows = []
    for group, chosen_group in chosen.groupby(GROUP_KEYS, dropna=False, sort=True):
        families = set(chosen_group[FAMILY])
        claims = {(h["method"], h["baseline"], h["metric"]): h["direction"] for h in hypotheses
                  if _matches(h.get("groups", "all"), group) and {h["method"], h["baseline"]} <= families}
        pairs = [*PAIRS, *dict.fromkeys((m, b) for m, b, _ in claims if (m, b) not in PAIRS)]
        for method, baseline in pairs:
            if not {method, baseline} <= families:
                continue
            seeds, a, b = _arms(done, chosen_group, method, baseline)
            common = a.index.intersection(b.index).sort_values()
            for metric in [*metrics, *(m for (x, y, m) in claims if (x, y) == (method, baseline) and m not in metrics)]:
                if metric not in a:
                    continue
                d = stats.paired_difference(a.loc[common, metric], b.loc[common, metric])
                direction = claims.get((method, baseline, metric))
                rows.append({**dict(zip(GROUP_KEYS, group)), "metric": metric, "method": method, "baseline": baseline,
                             "seeds": seeds, "n": d["n"], "mean_diff": d["mean"], "ci95_low": d["low"],
                             "ci95_high": d["high"], "p": d["p"] if d["n"] >= MIN_PAIRS else np.nan, "sd": d["sd"],
                             "hypothesis": EXPECTED[direction] if direction else "",
                             "role": "confirmatory" if direction and seeds == "confirm" else "exploratory"})
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("p_holm", "detectable", "verdict")] + ["sd"])
    declared = table["hypothesis"] != ""
    # Holm over exactly the declared rows; one without a test counts in m and is never rejected
    family_size = int(declared.sum())
    table["p_holm"] = np.nan
    if family_size:
        table.loc[declared, "p_holm"] = stats.holm(table.loc[declared, "p"].fillna(1.0))
        table.loc[declared & table["p"].isna(), "p_holm"] = np.nan
    level = np.where(declared, ALPHA / max(family_size, 1), ALPHA)
    table["detectable"] = [stats.detectable_effect(sd, n, alpha) for sd, n, alpha in zip(table["sd"], table["n"], level)]
    table["verdict"] = [verdict(row) for row in table.to_dict("records")]
    return table[COLUMNS]


def verdict(row):
    """A hypothesis's verdict (see the module docstring), or why a row has no p; '' for an exploratory row."""
    if row["n"] < MIN_PAIRS:
        return "n too small"
    if row["sd"] == 0:
        return "no variance"
    if not row["hypothesis"]:
        return ""
    if not row["p_holm"] < ALPHA:
        return "not resolved"
    gain = row["mean_diff"] if row["hypothesis"] == EXPECTED["greater"] else -row["mean_diff"]
    return "supported" if gain > 0 else "contradicted"


def markdown(table, heading="##"):
    """The comparisons as markdown: the hypotheses first, then the exploratory rows, one table per group."""
    if table.empty:
        return ""
    declared = table[table["hypothesis"] != ""]
    confirmed = (declared["role"] == "confirmatory").all() if len(declared) else False
    out = [f"{heading} Paired comparisons\n",
           "Method − baseline per seed, between the configurations chosen by validation accuracy: mean "
           "[95% t-interval] and paired t-test p; a drop (`ptq_drop_*`) is better when lower. "
           f"Hypotheses declared before the sweep ({len(declared)} rows) form the family of Holm's adjustment and get "
           "a verdict; " + ("they are tested on the confirmation seeds, which chose nothing. " if confirmed else
                            "**they are tested on the seeds that chose the configurations, so their verdicts are "
                            "exploratory.** ")
           + "Every other row is exploratory: its p is unadjusted. `detectable`: the smallest difference the test "
           f"finds with 80% power at the level its verdict uses (α/m = {ALPHA}/{max(len(declared), 1)} for a hypothesis). "
           f"No p below {MIN_PAIRS} pairs or without variance.\n"]
    for title, rows in (("Hypotheses", declared), ("Exploratory", table[table["hypothesis"] == ""])):
        if rows.empty:
            continue
        out.append(f"{heading}# {title}\n")
        for group, part in rows.groupby(GROUP_KEYS, dropna=False, sort=True):
            out.append(f"{heading}## {group_title(*group)}\n")
            out.append("| metric | method − baseline | seeds | n | difference [95% CI] | p | p (Holm) | detectable | verdict |")
            out.append("|---|---|---|---|---|---|---|---|---|")
            for r in part.to_dict("records"):
                interval = f"{r['mean_diff']:+.2f} [{r['ci95_low']:+.2f}, {r['ci95_high']:+.2f}]"
                claim = f" ({r['hypothesis']})" if r["hypothesis"] else ""
                out.append(f"| {r['metric']} | {r['method']} − {r['baseline']}{claim} | {r['seeds']} | {r['n']} | {interval} "
                           f"| {_p(r['p'])} | {_p(r['p_holm'])} | {r['detectable']:.2f} | {r['verdict'] or '–'} |")
            out.append("")
    return "\n".join(out)


def _p(value):
    return "–" if pd.isna(value) else f"{value:.3g}"
