"""Write every output of a results folder from its trials.csv: per_config.csv, leaderboard.{csv,md,html},
comparisons.csv and figures/*.png. The experiment's hypotheses come from hypotheses.json, which the
sweep writes before its first trial (they are declared before anything runs)."""
import json
from dataclasses import dataclass

import pandas as pd

from hero_bench import trials
from hero_bench.atomic import write_atomic
from hero_bench.errors import HeroBenchError
from hero_bench.results import comparisons, figures, leaderboard

HYPOTHESES = "hypotheses.json"


@dataclass
class Analysis:
    """What a trials table says: per-configuration statistics of the tuning stages (`configs`), the
    leaderboard (`board`), each family's choice (`chosen`) and the paired comparisons (`paired`)."""

    df: pd.DataFrame
    configs: pd.DataFrame
    board: pd.DataFrame
    chosen: pd.DataFrame
    paired: pd.DataFrame


def analyse(df, hypotheses=()):
    configs = leaderboard.per_config(trials.tuning(df))
    chosen = leaderboard.select_best(configs)
    return Analysis(df, configs, leaderboard.leaderboard(df, configs), chosen,
                    comparisons.comparisons(df, chosen, hypotheses))


def read_hypotheses(folder):
    """The hypotheses a results folder's sweep declared (none if it has no hypotheses.json)."""
    path = folder / HYPOTHESES
    if not path.exists():
        return []
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise HeroBenchError(f"cannot read {path}: {exc}") from None


def write_hypotheses(folder, hypotheses):
    write_atomic(folder / HYPOTHESES, json.dumps(list(hypotheses), indent=2) + "\n")


def write(results_dir):
    """Write the outputs into the folder of `results_dir` (a results folder or its trials.csv) and return
    (their paths, one note per figure not drawn and why)."""
    folder = trials.path_of(results_dir).parent
    result = analyse(trials.read(results_dir), read_hypotheses(folder))
    title = f"Leaderboard: {leaderboard.experiment_name(result.df, folder.name)}"
    written = [write_atomic(folder / "per_config.csv", result.configs.to_csv(index=False)),
               write_atomic(folder / "leaderboard.csv", result.board.to_csv(index=False)),
               write_atomic(folder / "comparisons.csv", result.paired.to_csv(index=False)),
               write_atomic(folder / "leaderboard.md", leaderboard.to_markdown(result.board, title)
                            + comparisons.markdown(result.paired)),
               write_atomic(folder / "leaderboard.html", leaderboard.to_html(result.board, title))]
    drawn, skipped = figures.write_figures(result.configs, folder / "figures", trials.tuning(result.df))
    return written + drawn, skipped


def summary(results_dir):
    """What a finished sweep's outputs say, in a few lines: per (dataset, model, label noise) the
    configuration with the best validation accuracy of any family (a tie named), and where to read more."""
    folder = trials.path_of(results_dir).parent
    board = leaderboard.leaderboard(trials.read(results_dir))
    chosen = board[board[trials.STATUS] == "completed"]
    lines = ["best by validation accuracy (test accuracy never chooses):"]
    for group, rows in chosen.groupby(trials.GROUP_KEYS, dropna=False, sort=True):
        keys = leaderboard.varying_keys(rows) or [trials.LR]
        best = rows[rows["val_acc_mean"] == rows["val_acc_mean"].max()]
        top = best.iloc[0]
        tie = f" (a tie with {', '.join(best[trials.FAMILY].iloc[1:])})" if len(best) > 1 else ""
        lines.append(f"  {leaderboard.group_title(*group)}: {top[trials.FAMILY]} "
                     f"({leaderboard.configuration_text(top, keys)}): val {top['val_acc_mean']:.2f}, "
                     f"test {top['test_acc_mean']:.2f} over {top['n_seeds']:.0f} seeds{tie}")
    lines.append(f"per family, chosen configurations and paired comparisons: {folder / 'leaderboard.md'} (also .html, "
                 f".csv); {folder / 'comparisons.csv'}; figures: {folder / 'figures'}; every trial: {folder / 'trials.csv'}")
    lines.append(f"a report (report.md, and on W&B when logged in): hero-bench report {folder}")
    return "\n".join(lines)
