"""Trials table -> per-configuration statistics -> leaderboard per method family.

Data flow: `trials.csv` (one row per trial, written by the sweep) is grouped into configurations
(every config column except `train.seed`), each metric is summarized over the seeds that
completed, and for every (dataset, model, label noise) the leaderboard keeps, per method family,
the configuration with the best MEAN VALIDATION accuracy. Test accuracy is reported, never used to
choose (docs/results.md).

Statistics over the n completed seeds of a configuration:
    mean = Σx / n,   std = sqrt(Σ(x - mean)² / (n - 1)),   ci95 = t_{0.975, n-1} · std / sqrt(n)
(std and ci95 are NaN for a single seed).
"""
import html

import numpy as np
import pandas as pd
from scipy import stats

from hero_bench import catalog, trials
from hero_bench.trials import FAMILY, GROUP_KEYS, STATUS, config_columns, family, family_order, is_config_key, metric_columns

CONFIG_ID = "config_id"

# Config columns always shown in leaderboard.md/html; other config columns only where they vary.
SHOWN_CONFIG = (trials.METHOD, trials.RADIUS, trials.COEF, trials.LR)


# ------------------------------------------------------------------------------ per configuration

def per_config(df):
    """One row per configuration: config_id, config_hash (where the table has it), config columns,
    family, status, n_trials, n_completed, diverged_epoch, and per metric m over the completed seeds:
    m_mean, m_std, m_count, m_ci95 (formulas in the module docstring).

    status: `diverged` if any seed diverged; `completed` if every seed of the table (every
    train.seed value seen) completed; `incomplete` otherwise (failed, stopped early, or missing).
    """
    df = trials.with_added_columns(df)
    keys = configuration_keys(df)
    by = [df[k] for k in keys]
    completed = df[STATUS] == "completed"
    table = pd.DataFrame({"completed": completed, "diverged": df[STATUS] == "diverged",
                          "seed": df[trials.SEED],
                          trials.DIVERGED_EPOCH: pd.to_numeric(df.get(trials.DIVERGED_EPOCH, np.nan), errors="coerce")})
    info = table.groupby(by, dropna=False, sort=True).agg(
        n_trials=("completed", "size"), n_completed=("completed", "sum"), any_diverged=("diverged", "any"),
        all_completed=("completed", "all"), n_seeds=("seed", "nunique"), diverged_epoch=(trials.DIVERGED_EPOCH, "min"))
    info = info.reset_index()
    info.insert(len(keys), FAMILY, family(info))
    complete = info["all_completed"] & (info["n_seeds"] == df[trials.SEED].nunique())
    info.insert(len(keys) + 1, STATUS, np.select([info["any_diverged"], complete], ["diverged", "completed"],
                                                   "incomplete"))
    info = info.drop(columns=["any_diverged", "all_completed", "n_seeds"])
    if trials.CONFIG_HASH in df:  # the id W&B runs carry (tables written before it have none)
        info.insert(0, trials.CONFIG_HASH, df[trials.CONFIG_HASH].groupby(by, dropna=False, sort=True).first().to_numpy())
    info.insert(0, CONFIG_ID, range(len(info)))  # the numbering of configuration_ids: groupby's sorted order

    # Metrics of trials that did not complete are no result: blank them before averaging.
    values = df[metric_columns(df)].apply(pd.to_numeric, errors="coerce").where(completed, axis=0)
    groups = values.groupby(by, dropna=False, sort=True)
    mean, std, count = groups.mean(), groups.std(ddof=1), groups.count()
    t = stats.t.ppf(0.975, (count - 1).clip(lower=1))  # std is NaN below 2 seeds, and so the interval
    summary = {}
    for m in values.columns:
        summary[f"{m}_mean"], summary[f"{m}_std"], summary[f"{m}_count"] = mean[m], std[m], count[m]
        summary[f"{m}_ci95"] = t[:, values.columns.get_loc(m)] * std[m] / np.sqrt(count[m].clip(lower=1))
    summary = pd.DataFrame(summary).reset_index(drop=True)
    return pd.concat([info, summary], axis=1)  # both grouped by the same keys: rows align by position


def configuration_keys(df):
    """The columns that make a configuration: every config column but the seed."""
    return [c for c in config_columns(df) if c != trials.SEED]


def configuration_ids(df):
    """Each trial's configuration, numbered as per_config numbers its rows (its `config_id`)."""
    df = trials.with_added_columns(df)
    return df.groupby([df[k] for k in configuration_keys(df)], dropna=False, sort=True).ngroup()


def select_best(configs):
    """Per (dataset, model, label noise and kind, family): the completed configuration with the
    highest mean validation accuracy. Diverged and incomplete configurations are never chosen.

    Ties (means equal to within 1e-9) go to the configuration with fewer mean gradient evaluations,
    then to the first in per_config's order. Added columns: `configurations`, the family's number of
    configurations in the group (its tuning budget); `tied`, how many shared the best mean (1: no tie);
    `edge`, every swept key whose chosen value is the smallest or largest the family tried there (an
    optimum the grid may not bracket).
    """
    eligible = (configs[STATUS] == "completed") & configs["val_acc_mean"].notna()
    chosen = []
    for _, members in configs.groupby(GROUP_KEYS + [FAMILY], dropna=False, sort=False):
        done = members[eligible.loc[members.index]]
        if done.empty:
            continue
        tied = done[np.isclose(done["val_acc_mean"], done["val_acc_mean"].max(), rtol=0, atol=1e-9)]
        cost = tied["grad_evals_mean"] if "grad_evals_mean" in tied else pd.Series(0, index=tied.index)
        best = tied.loc[cost.sort_values(kind="stable").index[0]].copy()
        best["configurations"], best["tied"], best["edge"] = len(members), len(tied), _edge(best, members)
        chosen.append(best)
    return pd.DataFrame(chosen).reset_index(drop=True) if chosen else configs.iloc[:0].assign(
        configurations=[], tied=[], edge=[])


def _edge(best, family):
    """`train.lr (highest), ...`: the swept numeric keys whose chosen value ends the family's range."""
    ends = []
    for key in configuration_keys(family):
        values = pd.to_numeric(family[key], errors="coerce").dropna().unique()
        if len(values) < 2 or pd.isna(pd.to_numeric(best[key], errors="coerce")):
            continue
        if best[key] == values.min():
            ends.append(f"{key} (lowest)")
        elif best[key] == values.max():
            ends.append(f"{key} (highest)")
    return ", ".join(ends)


# ------------------------------------------------------------------------------------ leaderboard

def shown_metrics(metrics):
    """Leaderboard metrics in the catalog's reading order: accuracy, generalization, quantization,
    curvature, weight noise, cost. Absent metrics are absent."""
    return [entry.column for entry in catalog.entries(metrics, shown=True)]


STABILITY_RESAMPLES = 1000  # bootstrap resamples of the tuning seeds behind each choice's stability
UNSTABLE = 0.8  # a choice that fewer resamples than this make again is flagged `unstable`


def selection_stability(df, configs, chosen, resamples=STABILITY_RESAMPLES, seed=0):
    """Per chosen configuration (a row of select_best), the fraction of `resamples` bootstrap resamples
    of the tuning seeds (n seeds drawn with replacement, numpy's generator seeded with `seed`, the
    same draws for every family) in which the rule of select_best, applied to the mean validation
    accuracy over the resampled seeds, chooses it again among its family's completed configurations.
    `df`: the tuning trials that per_config summarized into `configs`."""
    done = trials.with_added_columns(df).assign(**{CONFIG_ID: configuration_ids(df)})
    done = done[done[STATUS] == "completed"]
    seeds = np.sort(df[trials.SEED].unique())
    draws = np.random.default_rng(seed).integers(0, len(seeds), size=(resamples, len(seeds)))
    values = done.pivot_table(index=CONFIG_ID, columns=trials.SEED, values="val_acc").reindex(columns=seeds)
    eligible = configs[(configs[STATUS] == "completed") & configs["val_acc_mean"].notna()]
    out = []
    for _, best in chosen.iterrows():
        members = eligible[(eligible[GROUP_KEYS + [FAMILY]].astype(str) == best[GROUP_KEYS + [FAMILY]].astype(str)).all(axis=1)]
        means = values.loc[members[CONFIG_ID]].to_numpy()[:, draws].mean(axis=2)  # configurations x resamples
        cost = members["grad_evals_mean"].to_numpy() if "grad_evals_mean" in members else np.zeros(len(members))
        order = np.lexsort((np.arange(len(members)), cost))  # ties go to fewer gradient evaluations, then the first
        tied = means >= means.max(axis=0) - 1e-9
        picked = members[CONFIG_ID].to_numpy()[order[tied[order].argmax(axis=0)]]
        out.append(float(np.mean(picked == best[CONFIG_ID])))
    return out


def leaderboard(df, configs=None):
    """Leaderboard of a trials table (every stage: the tuning stages choose, the confirmation stage
    re-tests the choices on fresh seeds).

    Per (data.name, model.name, data.label_noise): one row per method family with the configuration
    chosen by mean validation accuracy over the tuning seeds (status completed), then one row per
    diverged configuration (status diverged, never chosen). Columns: group keys, family, status,
    config, n_seeds, n_trials, configurations, tied and edge (see select_best), stability (see
    selection_stability), m_mean and m_std per shown metric, test_acc_ci95 (all over the tuning
    seeds), confirm_seeds with confirm_test_acc_mean and _std (the chosen configuration on the
    confirmation seeds, where the sweep ran them), best_test_acc (True where the group's best test
    accuracy is), gain_vs_sgd and gain_vs_sam (test_acc_mean minus that family's, in points).
    `configs`: per_config of the tuning stages, when the caller has it already.
    """
    df = trials.with_added_columns(df)
    tuning = trials.tuning(df)
    configs = per_config(tuning) if configs is None else configs
    metrics = shown_metrics(metric_columns(df))
    config = [c for c in config_columns(df) if c not in GROUP_KEYS + [trials.NAME, trials.SEED]]
    columns = (GROUP_KEYS + [FAMILY, STATUS] + config + ["n_seeds", "n_trials", "configurations", "tied", "edge", "stability"]
               + [f"{m}_{s}" for m in metrics for s in ("mean", "std")] + ["test_acc_ci95"])
    if configs.empty:
        return pd.DataFrame(columns=columns)
    best = select_best(configs)
    best["stability"] = selection_stability(tuning, configs, best)
    diverged = configs[configs[STATUS] == "diverged"]
    board = pd.concat([best, diverged], ignore_index=True).rename(columns={"n_completed": "n_seeds"}).copy()  # one block per dtype
    if trials.DIVERGED_EPOCH in board and (board[STATUS] == "diverged").any():
        columns.insert(columns.index(STATUS) + 1, trials.DIVERGED_EPOCH)
    confirmed = trials.confirmation(df.assign(**{CONFIG_ID: configuration_ids(df)}))
    confirmed = confirmed[confirmed[STATUS] == "completed"].groupby(CONFIG_ID)["test_acc"]
    if len(confirmed):
        board = board.assign(confirm_seeds=board[CONFIG_ID].map(confirmed.count()),
                             confirm_test_acc_mean=board[CONFIG_ID].map(confirmed.mean()),
                             confirm_test_acc_std=board[CONFIG_ID].map(confirmed.std()))
        columns += ["confirm_seeds", "confirm_test_acc_mean", "confirm_test_acc_std"]
    board = board[columns]
    # A diverged configuration's surviving seeds are not a result; its stats stay in per_config.csv.
    stats_columns = [c for c in board.columns if c.endswith(("_mean", "_std", "_ci95"))]
    board.loc[board[STATUS] == "diverged", stats_columns] = np.nan

    rank = {f: i for i, f in enumerate(family_order(board[FAMILY]))}
    board = board.assign(_diverged=board[STATUS] == "diverged", _rank=board[FAMILY].map(rank))
    board = board.sort_values(GROUP_KEYS + ["_diverged", "_rank"]).drop(columns=["_diverged", "_rank"])
    board = board.reset_index(drop=True)
    chosen = board[STATUS] == "completed"
    top = board[chosen].groupby(GROUP_KEYS, dropna=False)["test_acc_mean"].transform("max")
    board["best_test_acc"] = False
    board.loc[top.index, "best_test_acc"] = np.isclose(board.loc[top.index, "test_acc_mean"], top)
    keys = pd.MultiIndex.from_frame(board[GROUP_KEYS])
    for base in ("sgd", "sam"):
        reference = board[chosen & (board[FAMILY] == base)].set_index(GROUP_KEYS)["test_acc_mean"]
        gain = board["test_acc_mean"].to_numpy() - reference.reindex(keys).to_numpy()
        board[f"gain_vs_{base}"] = np.where(chosen, gain, np.nan)
    return board


# -------------------------------------------------------------------------------------- rendering

def _setting(value):
    """A configuration value as written in an experiment file: 0.03, 100, mlp."""
    if pd.isna(value):
        return "–"
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


def _mean_std(mean, std, metric):
    """`mean ± std` with both at the mean's precision."""
    if pd.isna(mean):
        return "–"
    places = catalog.decimals(metric, mean)
    return f"{mean:.{places}f}" + ("" if pd.isna(std) else f" ± {std:.{places}f}")


def _display(board):
    """Board of one group -> (table of strings, {(row, column)} cells to emphasize,
    {config column: value} for config columns that are the same on every row)."""
    metrics = [c.removesuffix("_mean") for c in board.columns if c.endswith("_mean") and not c.startswith("confirm_")]
    constant = [c for c in board.columns
                if c not in GROUP_KEYS + list(SHOWN_CONFIG) + [FAMILY, STATUS, trials.DIVERGED_EPOCH]
                and is_config_key(c) and board[c].nunique(dropna=False) == 1]
    config = [c for c in board.columns if is_config_key(c) and c not in GROUP_KEYS + constant]
    table = pd.DataFrame(index=board.index)
    table[FAMILY] = board[FAMILY]
    table[STATUS] = board[STATUS]
    if trials.DIVERGED_EPOCH in board:
        epoch = board[trials.DIVERGED_EPOCH].map(lambda e: "" if pd.isna(e) else f" (epoch {e:.0f})")
        table[STATUS] = board[STATUS] + epoch
    for c in config:
        table[c] = board[c].map(_setting)
    table["seeds done"] = [f"{done}/{n}" for done, n in zip(board["n_seeds"], board["n_trials"])]
    table["grid"] = board["configurations"].map(lambda n: "–" if pd.isna(n) else f"{n:.0f}")
    table["stability"] = board["stability"].map(lambda f: "–" if pd.isna(f) else f"{f:.2f}")
    table["choice"] = [_flags(tied, edge, stability) for tied, edge, stability in
                       zip(board["tied"], board["edge"], board["stability"])]
    for m in metrics:
        table[m] = [_mean_std(a, s, m) for a, s in zip(board[f"{m}_mean"], board[f"{m}_std"])]
    for base in ("sgd", "sam"):
        table[f"vs {base} (pts)"] = board[f"gain_vs_{base}"].map(lambda g: "–" if pd.isna(g) else f"{g:+.2f}")
    bold = {(i, "test_acc") for i in board.index[board["best_test_acc"].astype(bool)]}
    same = {c: board[c].iloc[0] for c in constant}
    return table, bold, same


def _flags(tied, edge, stability):
    """What a reader should know about a choice: a validation tie, an optimum on the grid's edge, a
    choice that resamples of the tuning seeds often do not make again."""
    flags = [f"tie of {tied:.0f}"] if tied > 1 else []
    flags += [f"unstable ({stability:.2f})"] if stability < UNSTABLE else []
    return "; ".join(flags + ([f"edge: {edge}"] if isinstance(edge, str) and edge else [])) or "–"


def _groups(board):
    for key, group in board.groupby(GROUP_KEYS, dropna=False, sort=True):
        yield group_title(*key), group.reset_index(drop=True)


def group_title(data, model, noise, kind):
    """`digits / mlp / label noise 0.4 (flip)`; the kind is named only where there is noise."""
    return f"{data} / {model} / label noise {noise:g}" + (f" ({kind})" if noise > 0 else "")


def _gain_sentence(group):
    hero = group[(group[FAMILY] == "hero") & (group[STATUS] == "completed")]
    if hero.empty:
        return ""
    parts = [f"{g:+.2f} points over {base.upper()}" for base in ("sgd", "sam")
             for g in [hero[f"gain_vs_{base}"].iloc[0]] if not pd.isna(g)]
    return f"HERO test accuracy: {', '.join(parts)}." if parts else ""


INTRO = ("Per method family, the configuration with the best mean validation accuracy "
         "(test accuracy never chooses; diverged configurations are listed, never chosen). "
         "Metrics are mean ± std over the completed seeds; accuracies in %; "
         "bold: best test accuracy in the group; gains are differences of mean test accuracy in points; "
         "grid: the family's configurations in the group; stability: the fraction of 1000 bootstrap resamples of the "
         "tuning seeds that make the same choice; choice: a validation tie, an unstable choice (stability below 0.8) "
         "or a choice at the edge of its grid. The tuning seeds choose; where the sweep has confirmation seeds, "
         "`test, confirm seeds` is the chosen configuration's test accuracy on them. Every metric of every chosen "
         "configuration is in leaderboard.csv and leaderboard.html.")


# The compact markdown table: short names for the knobs, and the metrics a reader checks first.
SHORT_NAMES = {trials.METHOD: "method", trials.LR: "lr", trials.RADIUS: "ρ", trials.COEF: "γ", "train.weight_decay": "wd",
               trials.FACTOR: "epochs x", trials.EPOCHS: "epochs"}
COMPACT_METRICS = (("val_acc", "val"), ("test_acc", "test"), ("test_acc_at_best_val", "test at best val"),
                   ("train_acc_noisy", "train (noisy labels)"), ("hessian_top_eig", "λ_max"), ("grad_evals", "grad evals"))


def configuration_text(row, keys):
    """`lr 0.1, ρ 0.5, γ 100`: a row's values of `keys`, with short names for the usual knobs."""
    return ", ".join(f"{SHORT_NAMES.get(k, k.rsplit('.', 1)[-1])} {_setting(row[k])}" for k in keys
                     if not pd.isna(row[k])) or "–"


def varying_keys(board):
    """The config columns (other than the group's) whose value differs between rows of `board`."""
    return [c for c in board.columns if is_config_key(c) and c not in GROUP_KEYS and board[c].nunique(dropna=False) > 1]


def _compact(board):
    """Board of one group -> (compact table of strings, cells to emphasize, constant config): family,
    the chosen values of the keys that differ between rows, grid size, seeds, the key metrics as
    mean ± std, the gain over SGD, and the choice's flags. The full table is in leaderboard.csv/html."""
    full, bold, same = _display(board)
    keys = [c for c in board.columns if is_config_key(c) and c not in GROUP_KEYS and c not in same]
    table = pd.DataFrame(index=board.index)
    table[FAMILY], table[STATUS] = full[FAMILY], full[STATUS]
    table["configuration"] = [configuration_text(row, keys) for _, row in board.iterrows()]
    table["grid"], table["seeds"], table["stability"] = full["grid"], full["seeds done"], full["stability"]
    for metric, label in COMPACT_METRICS:
        if f"{metric}_mean" in board:
            table[label] = [_mean_std(a, s, metric) for a, s in zip(board[f"{metric}_mean"], board[f"{metric}_std"])]
    if "confirm_test_acc_mean" in board:
        table["test, confirm seeds"] = [_mean_std(a, s, "test_acc") + ("" if pd.isna(n) else f" (n {n:.0f})") for a, s, n
                                        in zip(board["confirm_test_acc_mean"], board["confirm_test_acc_std"], board["confirm_seeds"])]
    table["vs sgd (pts)"], table["choice"] = full["vs sgd (pts)"], full["choice"]
    return table, {(i, "test") for i, _ in bold}, same


def markdown_tables(board, heading="##"):
    """The leaderboard as markdown: one section and compact table per (dataset, model, label noise)."""
    if board.empty:
        return "No completed or diverged configurations yet.\n"
    out = []
    for title, group in _groups(board):
        table, bold, same = _compact(group)
        out.append(f"{heading} {title}\n")
        if same:
            out.append("Same for every row: " + ", ".join(f"`{k}={_setting(v)}`" for k, v in same.items()) + "\n")
        out.append("| " + " | ".join(table.columns) + " |")
        out.append("|" + "|".join("---" for _ in table.columns) + "|")
        for i, row in table.iterrows():
            cells = [f"**{v}**" if (i, c) in bold else v.replace("|", "\\|") for c, v in row.items()]
            out.append("| " + " | ".join(cells) + " |")
        sentence = _gain_sentence(group)
        out.append(f"\n{sentence}\n" if sentence else "")
    return "\n".join(out)


def to_markdown(board, title):
    return f"# {title}\n\n{INTRO}\n\n{markdown_tables(board)}"


def to_html(board, title):
    parts = [f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif} table{border-collapse:collapse} "
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(INTRO)}</p>"]
    for name, group in _groups(board):
        table, bold, same = _display(group)
        cells = table.map(html.escape)
        for i, c in bold:
            cells.loc[i, c] = f"<b>{cells.loc[i, c]}</b>"
        parts.append(f"<h2>{html.escape(name)}</h2>")
        if same:
            parts.append("<p>Same for every row: "
                         + html.escape(", ".join(f"{k}={_setting(v)}" for k, v in same.items())) + "</p>")
        parts.append(cells.to_html(index=False, escape=False, border=0))
        parts.append(f"<p>{html.escape(_gain_sentence(group))}</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------- writing

def experiment_name(df, fallback):
    names = df["name"].dropna().unique() if "name" in df else []
    return str(names[0]) if len(names) == 1 else str(fallback)
