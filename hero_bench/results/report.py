"""The W&B report of a finished sweep (wandb-workspaces), and the same content as report.md.

`build_report` is pure: it builds the report object (blocks and panels) without any network call,
so it can be inspected offline. Its panels read the sweep's W&B runs (hero_bench.tracking): the
summary run's leaderboard Table and figures, and the trial runs' configs, summaries and histories.
`publish` saves it to W&B when credentials exist and the mode is online; report.md is written in
every case, so a results folder always carries its report.
"""
import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import wandb_workspaces.reports.v2 as wr

from hero_bench import catalog, tracking, trials
from hero_bench.atomic import write_atomic
from hero_bench.errors import HeroBenchError
from hero_bench.results.figures import CAPTIONS, figures_of
from hero_bench.results import comparisons
from hero_bench.results import outputs
from hero_bench.results.leaderboard import INTRO, experiment_name, markdown_tables, shown_metrics
from hero_bench.trials import COEF, CONFIG_HASH, NOISE, RADIUS, metric_columns

# The sweep's knobs and the accuracies they drive, as parallel axes (config keys, then summary metrics).
PARALLEL_CONFIG = (RADIUS, COEF, NOISE)
PARALLEL_METRICS = ("val_acc", "test_acc")
# Runs carry their method family as W&B job type (tracking.py), so panels group by it.
FAMILY = "JobType"
PANELS_NOTE = ("The panels below read the experiment's trial runs (group `{name}`), grouped by method family "
               "(the runs' job type) or by configuration (`config_hash`, the same for all seeds of a configuration); "
               "they aggregate every run of a family, while the leaderboard and the figures use the configuration "
               "chosen by validation accuracy.")
TABLE_NOTE = ("The table is leaderboard.csv as the summary run `{run}` logged it: per (dataset, model, label noise) "
              "and method family, the configuration with the best mean validation accuracy over its seeds (test "
              "accuracy never chooses), every metric as `_mean` and `_std` over the completed seeds. That run also "
              "holds trials.csv, leaderboard.csv and comparisons.csv as the artifact `{name}-results`.")


def _load(source):
    """results folder, trials.csv path or DataFrame -> (experiment name, its Analysis, folder or None)."""
    if isinstance(source, pd.DataFrame):
        return experiment_name(source, "hero-bench"), outputs.analyse(source), None
    folder = trials.path_of(source).parent
    df = trials.read(source)
    return experiment_name(df, folder.name), outputs.analyse(df, outputs.read_hypotheses(folder)), folder


def _summary(name, df):
    counts = df[trials.STATUS].value_counts()
    statuses = ", ".join(f"{n} {status}" for status, n in counts.items())
    datasets = ", ".join(map(str, sorted(df[trials.DATA].unique())))
    models = ", ".join(map(str, sorted(df[trials.MODEL].unique())))
    noise = ", ".join(f"{p:g}" for p in sorted(df[NOISE].unique()))
    return (f"Experiment `{name}`: {len(df)} trials ({statuses}) on {datasets} with {models}; "
            f"label noise {noise}; {df[trials.SEED].nunique()} seed(s) per configuration. "
            "Hyperparameters are chosen on validation accuracy; test accuracy is reported, never used to choose.")


def _figures(df, folder):
    """(path relative to the results folder, caption) of every figure drawn for this experiment."""
    if folder is None:
        return []
    return [(path.relative_to(folder).as_posix(), CAPTIONS[kind]) for kind, path in figures_of(df, folder / "figures")]


def _panels(df):
    """W&B panels over the trial runs, for the metrics the trials table has."""
    metrics = shown_metrics(metric_columns(df))
    columns = ([wr.ParallelCoordinatesPlotColumn(metric=wr.Config(key)) for key in PARALLEL_CONFIG]
               + [wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(m)) for m in PARALLEL_METRICS])
    panels = [wr.ParallelCoordinatesPlot(title="radius, hessian_coef, label noise -> accuracy", columns=columns,
                                         layout=wr.Layout(w=24, h=8)),
              wr.LinePlot(title="validation accuracy per epoch: mean and std over the seeds of each configuration",
                          x=tracking.EPOCH, y=["val_acc"], groupby=wr.Config(CONFIG_HASH), groupby_aggfunc="mean",
                          groupby_rangefunc="stddev", layout=wr.Layout(w=24, h=8))]
    ptq = [entry.column for entry in catalog.entries(metrics, kind="ptq_acc", variant="")]
    if ptq:
        panels.append(wr.BarPlot(title="test accuracy after PTQ, per bit width (%)", metrics=ptq,
                                 groupby=FAMILY, groupby_aggfunc="mean", groupby_rangefunc="stddev",
                                 orientation="v", layout=wr.Layout(w=12, h=8)))
    if "hessian_top_eig" in metrics:
        panels.append(wr.BarPlot(title="top Hessian eigenvalue per family", metrics=["hessian_top_eig"],
                                 groupby=FAMILY, groupby_aggfunc="mean", groupby_rangefunc="stddev",
                                 orientation="v", layout=wr.Layout(w=12, h=8)))
    if "grad_evals" in metrics:
        panels.append(wr.ScatterPlot(title="test accuracy vs gradient evaluations", x="grad_evals", y="test_acc",
                                     layout=wr.Layout(w=12, h=8)))
    return panels


def build_report(source, *, entity, project, title=None):
    """The W&B report of a results folder (or trials DataFrame), built without network access.

    Blocks: summary; the leaderboard, a panel of the summary run's Table (tracking.LEADERBOARD), and
    the paired comparisons (markdown); a panel grid over the trial runs (parallel coordinates
    radius/hessian_coef/label noise -> val/test accuracy, validation accuracy per epoch by
    configuration, PTQ accuracy per bit width, Hessian top eigenvalue per family, accuracy vs compute);
    the figures, one media panel each of the image the summary run logged (tracking.figure_key).
    """
    name, analysis, folder = _load(source)
    df = analysis.df
    summary_id = tracking.summary_run_id(name)
    summary = wr.Runset(entity=entity, project=project, name="summary run", filters=f"ID = '{summary_id}'")
    runs = wr.Runset(entity=entity, project=project, name=name,
                     filters=f"Group = '{name}' and JobType != '{tracking.SUMMARY}'")
    blocks = [wr.MarkdownBlock(text=_summary(name, df)),
              wr.H1(text="Leaderboard"),
              wr.MarkdownBlock(text=TABLE_NOTE.format(run=summary_id, name=name)),
              wr.PanelGrid(runsets=[summary], hide_run_sets=True, panels=[
                  wr.WeavePanelSummaryTable(table_name=tracking.LEADERBOARD, layout=wr.Layout(w=24, h=12))]),
              wr.MarkdownBlock(text=comparisons.markdown(analysis.paired, heading="#")),
              wr.H1(text="Sweep"),
              wr.MarkdownBlock(text=PANELS_NOTE.format(name=name)),
              wr.PanelGrid(runsets=[runs], panels=_panels(df))]
    figures = _figures(df, folder)
    if figures:
        blocks += [wr.H1(text="Figures"),
                   wr.PanelGrid(runsets=[summary], hide_run_sets=True, panels=[
                       wr.MediaBrowser(title=caption, media_keys=[tracking.figure_key(Path(path))],
                                       layout=wr.Layout(w=12, h=10))
                       for path, caption in figures])]
    return wr.Report(entity=entity, project=project, title=title or f"hero-bench: {name}",
                     description="HERO vs SGD, SAM and GradNorm: generalization, label noise, quantization, "
                                 "curvature and cost", blocks=blocks)


def report_markdown(results_dir, *, title=None):
    """The report's content as markdown: summary, leaderboard tables inline, figures linked relatively."""
    name, analysis, folder = _load(results_dir)
    df = analysis.df
    parts = [f"# {title or f'hero-bench: {name}'}\n", _summary(name, df) + "\n",
             "## Leaderboard\n", INTRO + "\n", markdown_tables(analysis.board, heading="###"),
             comparisons.markdown(analysis.paired, heading="##"),
             "## Figures\n"]
    figures = _figures(df, folder)
    parts += [f"### {caption}\n\n![{caption}]({path})\n" for path, caption in figures] or \
             ["No figures drawn yet (`hero-bench leaderboard` draws them).\n"]
    parts.append("## W&B\n\nPublished with `hero-bench report`, the W&B version of this report shows the leaderboard "
                 "as the summary run's Table and the figures as its images, and adds live panels over the "
                 "experiment's runs: a parallel-coordinates plot of radius, hessian_coef and label noise against "
                 "validation and test accuracy, validation accuracy per epoch by configuration (mean and std over "
                 "seeds), PTQ accuracy per bit width and the Hessian top eigenvalue per family, and test accuracy "
                 "against gradient evaluations.\n")
    return "\n".join(parts)


def has_credentials():
    """True when W&B can authenticate: WANDB_API_KEY is set or `wandb login` stored a key in netrc.
    Only the key's presence is checked; the key is never read into hero-bench's outputs."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def publish(results_dir, entity, project, *, title=None):
    """Write results/<name>/report.md; when W&B credentials exist and WANDB_MODE is online (the
    default), also save the report to W&B and print its URL. Returns the URL or the report.md path."""
    folder = trials.path_of(results_dir).parent
    path = write_atomic(folder / "report.md", report_markdown(results_dir, title=title))
    mode = os.environ.get("WANDB_MODE", "online")
    if mode in ("offline", "disabled", "dryrun") or not has_credentials():
        reason = f"WANDB_MODE={mode}" if has_credentials() else "no W&B credentials"
        print(f"Wrote {path}; W&B report not published ({reason}). To publish it: `wandb login`, then "
              f"`hero-bench report {folder} --entity {entity or 'ENTITY'} --project {project or 'PROJECT'}`"
              + (" with WANDB_MODE=online" if has_credentials() else ""))
        return path
    if not entity or not project:
        raise HeroBenchError("publishing a W&B report needs --entity and --project")
    report = build_report(results_dir, entity=entity, project=project, title=title)
    try:
        report.save()
    except Exception as error:  # network, permissions, unknown entity: one line for the user
        raise HeroBenchError(f"could not save the W&B report to {entity}/{project}: {error}") from error
    print(f"Wrote {path}; W&B report: {report.url}")
    return report.url
