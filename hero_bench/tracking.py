"""W&B runs: a trial's, as `hero-bench train` and the sweep's Ray Tune callback (hero_bench.sweep.tracking)
both make it (how it starts, what its config carries, its step axis, what it logs, how it ends), and a
sweep's summary run, with the keys it logs under (hero_bench.results.report refers to them). No Ray
here, and wandb is imported only when a run starts.

A trial's run: group = experiment name, job type and tag = method family, config = what the trial ran,
nested as in the YAML (report panels address `config:optimizer.radius`), with its `family` and its
`config_hash` (the same for every seed of a configuration, so W&B can group seeds by it), `epoch` as
the step of every metric, the metrics of each epoch in the history, the final metrics and the status
in the summary. The summary run (id `<name>-summary`, job type `summary`) logs leaderboard.csv as a
wandb.Table, the figures as images, and trials.csv, leaderboard.csv and comparisons.csv as the
artifact `<name>-results`. A run captures no console: a sweep driver prints every trial's progress,
which belongs to no single run. The API key is read by wandb from the environment or its netrc;
hero-bench never reads or writes it.
"""
import os
import warnings

from hero_bench import trials
from hero_bench.atomic import refuse_links
from hero_bench.errors import HeroBenchWarning

INIT_TIMEOUT_S = 30  # online mode without network must not stall a trial for wandb's default 90 s
EPOCH = "epoch"
SUMMARY = "summary"  # the summary run's job type
LEADERBOARD = "leaderboard"  # the summary run's key of leaderboard.csv as a wandb.Table
FIGURES = "figures"  # the summary run logs figures/<stem>.png as the image `figures/<stem>`
ARTIFACT_FILES = ("trials.csv", "leaderboard.csv", "comparisons.csv")  # the summary run's artifact


def agent_run_id():
    """The id of the run that `wandb agent` started this process for (it sets WANDB_SWEEP_ID and
    WANDB_RUN_ID), or None."""
    return os.environ.get("WANDB_RUN_ID") if os.environ.get("WANDB_SWEEP_ID") else None


def train_mode(flag):
    """The W&B mode of `hero-bench train`: --wandb `flag`; without it, disabled, unless `wandb agent`
    runs it: then W&B's own (None: WANDB_MODE, online by default), so the agent's sweep gets the run."""
    if flag:
        return flag
    return None if agent_run_id() else "disabled"


def summary_run_id(name):
    """The id (and name) of the summary run of experiment `name`."""
    return f"{name}-summary"


def figure_key(path):
    """The key the summary run logs a figure under: `figures/heatmap_digits_mlp`."""
    return f"{FIGURES}/{path.stem}"


def init(tracking, *, mode, folder, requirements=True, **kwargs):
    """wandb.init with hero-bench's settings: runs under `folder` (mkdir'ed), in `mode` (offline,
    online, disabled; None: wandb's own choice, WANDB_MODE), several runs open at once in one process
    (a sweep driver holds one per running trial), no console capture, no W&B lines in the terminal;
    `requirements`: with the list of the installed Python packages (most of a run start's time)."""
    import wandb

    refuse_links(folder)  # W&B writes there: never through a link
    folder.mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=tracking.project, entity=tracking.entity, dir=str(folder), mode=mode, reinit="create_new",
        settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S, silent=True, console="off",
                                x_save_requirements=requirements), **kwargs,
    )


def run_config(config):
    """A trial run's config: what the trial ran (nested), its method family and its config_hash."""
    return {**trials.ran(config), trials.FAMILY: trials.config_family(config),
            trials.CONFIG_HASH: trials.config_hash(config)}


def start_trial(config, *, mode, folder, requirements=True, **kwargs):
    """The W&B run of a trial with Config `config`; `kwargs` go to wandb.init (id, name, resume);
    `requirements=False`: a sweep's trial run, without the package list (its summary run has it)."""
    family = trials.config_family(config)
    run = init(config.tracking, mode=mode, folder=folder, requirements=requirements, group=config.name,
               job_type=family, tags=[family], config=run_config(config), **kwargs)
    run.define_metric(EPOCH)
    run.define_metric("*", step_metric=EPOCH)
    return run


def log_epoch(run, metrics, last=0):
    """A report (hero-bench's metrics only) into the run's history at step = its epoch, unless that
    epoch is `last` (the last epoch logged) or earlier: a diverged epoch reports the last good epoch
    again, a retry from a checkpoint the epochs after it. Returns the last epoch logged now."""
    epoch = metrics.get(EPOCH)
    if epoch is None or epoch <= last:
        return last
    run.log(numbers(metrics), step=int(epoch))
    return epoch


def finish_trial(run, config, result, error=None):
    """The trial's last report `result` (its final metrics) and its status, as trials.csv has it, into
    the run's summary; the run finished, with exit code 1 when the trial failed (`error`)."""
    status = trials.trial_status(config, result, error)
    run.summary.update(numbers(result))
    run.summary[trials.STATUS] = status
    run.finish(exit_code=1 if status == "failed" else 0)


def numbers(metrics):
    """The numeric entries of a report (W&B plots numbers; text such as `device` stays out)."""
    return {k: v for k, v in metrics.items() if trials.is_number(v)}


def unreachable(error):
    """Whether a W&B failure means W&B itself cannot be reached, rather than one run failing: its
    servers (wandb.errors.CommError: no network, a timeout, a refused key) or its service process
    (the connection to it lost, or its mailbox closed once it died)."""
    from wandb.errors import CommError
    from wandb.sdk.mailbox import MailboxClosedError

    return isinstance(error, (CommError, ConnectionError, MailboxClosedError))


class TrainRun:
    """The W&B run of `hero-bench train` (none when `mode` is disabled): `report` is run_trial's hook.
    A W&B failure costs one warning and the run, never the training."""

    def __init__(self, config, mode, folder):
        self.config, self.run, self.epoch = config, None, 0
        if mode != "disabled":
            self.run = self.guarded("run start", start_trial, config, mode=mode, folder=folder)

    def guarded(self, what, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking must never stop training
            warnings.warn(HeroBenchWarning(f"W&B {what} failed ({type(exc).__name__}: {exc}); "
                                           "training goes on untracked"))
            self.run = None
            return None

    def report(self, metrics, state):
        if self.run is not None:
            self.epoch = self.guarded("log", log_epoch, self.run, metrics, self.epoch)

    def finish(self, result):
        """The final metrics into the run's summary; returns where the run is, in one line (or None)."""
        if self.run is None:
            return None
        where = (f"W&B: offline run in {self.run.settings.sync_dir}; upload it with `wandb login`, then `wandb sync "
                 f"{self.run.settings.sync_dir}`" if self.run.offline else f"W&B: run {self.run.url}")
        self.guarded("run finish", finish_trial, self.run, self.config, result)
        return where if self.run is not None else None


def log_summary(tracking, name, results_dir):
    """The summary run of experiment `name` (in mode tracking.wandb), from the outputs written into
    `results_dir`."""
    import pandas as pd
    import wandb

    run_id = summary_run_id(name)
    run = init(tracking, mode=tracking.wandb, folder=results_dir / "wandb", id=run_id, name=run_id, group=name,
               job_type=SUMMARY, resume="allow")
    run.log({LEADERBOARD: wandb.Table(dataframe=pd.read_csv(results_dir / "leaderboard.csv"))})
    images = {figure_key(path): wandb.Image(str(path)) for path in sorted((results_dir / FIGURES).glob("*.png"))}
    if images:
        run.log(images)
    artifact = wandb.Artifact(f"{name}-results", type="results", description=f"hero-bench sweep {name}: the trials "
                              "table, the leaderboard and the paired comparisons")
    for file in ARTIFACT_FILES:
        artifact.add_file(str(results_dir / file))
    run.log_artifact(artifact)
    run.finish()
