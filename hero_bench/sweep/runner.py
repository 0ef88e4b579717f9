"""The Tuner of a sweep: search algorithm, scheduler, loggers, failure policy, the trials table,
interruptions. `run` checks everything, locks the results folder, runs (or resumes) the sweep and
returns its trials table."""
import contextlib
import logging
import os
import secrets
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

from hero_bench import trials
from hero_bench.atomic import write_atomic
from hero_bench.errors import ConfigError, Interrupted
from hero_bench.sweep import console, folder, resume as resuming
from hero_bench.sweep.cluster import check_resources, start_ray
from hero_bench.sweep.space import POINT, TrialConfigs, grid_params, search_space, trial_count, trial_id, trial_params
from hero_bench.sweep.trainable import trainable

# Keeping only the last checkpoints makes Ray snapshot its experiment state at each one; with short
# trials that is frequent but cheap, so its warning about it is noise here.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


class TrialsTable(tune.Callback):
    """Keeps results/<name>/trials.csv current: rewritten atomically whenever a trial ends.

    Rows are kept by trial id (a resumed trial keeps its id): the rows in the file when the sweep
    starts stay as they are, a trial's row is built once, when it ends, and a finished trial's row is
    never replaced, so no trial appears twice. Only a trial that ends gets a row: one cut short by an
    interruption has none, and --resume runs it on.
    """

    def __init__(self, configs, path):
        self.configs, self.path = configs, Path(path)
        self.rows = {}

    def setup(self, **info):
        self.rows = read_rows(self.path)

    def add(self, trial, error):
        key = trial_id(trial.config, trial.trial_id)
        old = self.rows.get(key)
        if old is not None and old[trials.STATUS] in trials.FINAL_STATUSES:
            return
        self.rows[key] = row(self.configs, key, trial.config, trial.last_result, error)
        try:
            write_rows(self.path, self.rows)
        except ConfigError as exc:
            # Raised into Ray it would count as a failure of this trial. The sweep goes on (Ray keeps
            # every result) and its final write of trials.csv reports the error if it persists.
            warnings.warn(f"{exc}; trying again when the next trial ends", stacklevel=2)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.add(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        # the text Ray wrote of the error (error.txt, in the driver's folder), never its pickled error
        path = trial.error_file
        self.add(trial, Path(path).read_text() if path and Path(path).is_file() else "error")


def row(configs, trial_id, params, result, error):
    return trials.row(trial_id, configs.get(params), trial_params(params), result, error)


def read_rows(path):
    """trial id -> row of every valid row of the trials table at `path` (none if there is none)."""
    return {r[trials.TRIAL_ID]: r for r in trials.parse(path)[0].to_dict("records")} if Path(path).exists() else {}


def write_rows(path, rows):
    if rows:  # a table without rows would have no header to read back
        write_atomic(path, trials.table(rows.values()).to_csv(index=False))


def make_tune_config(config, num_samples):
    sweep, scheduler, search_alg = config.sweep, None, None
    if sweep.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        # Rungs by epoch: Ray's training_iteration restarts at 1 in a resumed trial. Every trial ends
        # at its own last epoch, never at max_t (Ray's default of 100 cut 200-epoch trials in half).
        scheduler = ASHAScheduler(time_attr="epoch", max_t=max(config.train.epochs, sweep.asha.grace_period),
                                  grace_period=sweep.asha.grace_period, reduction_factor=sweep.asha.reduction_factor,
                                  stop_last_trials=False)
    if sweep.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch()
    return tune.TuneConfig(
        metric=sweep.metric, mode=sweep.mode, scheduler=scheduler, search_alg=search_alg,
        num_samples=num_samples, max_concurrent_trials=sweep.max_concurrent_trials,
        reuse_actors=True,
    )


@contextlib.contextmanager
def without_auto_loggers():
    """Ray Tune's automatic loggers off while a sweep runs (its documented
    TUNE_DISABLE_AUTO_CALLBACK_LOGGERS; a value already set wins): `ray_loggers` passes them itself."""
    added = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS" not in os.environ
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    try:
        yield
    finally:
        if added:
            del os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"]


def ray_loggers(tracking):
    """Ray Tune's per-trial files in its storage: result.json and progress.csv, and TensorBoard
    event files when `tracking.tensorboard` (W&B covers what TensorBoard shows; Ray's TensorBoard
    logger took most of the driver's time per result)."""
    return [JsonLoggerCallback(), CSVLoggerCallback(), *([TBXLoggerCallback()] if tracking.tensorboard else [])]


class RayResumeAdvice(logging.Filter):
    """Ray Tune's advice on an interrupted run (Tuner.restore) does not apply: hero-bench's own line
    says how to go on."""

    def filter(self, record):
        return not record.getMessage().startswith(("Experiment has been interrupted", "Trials did not complete"))


@contextlib.contextmanager
def ray_resume_advice_muted():
    logger, advice = logging.getLogger("ray.tune.tune"), RayResumeAdvice()
    logger.addFilter(advice)
    try:
        yield
    finally:
        logger.removeFilter(advice)


def finished(frame, started):
    """`sweep finished in 139 s: 96 trials (96 completed, 0 stopped, 0 diverged, 0 failed)`"""
    counts = frame[trials.STATUS].value_counts() if len(frame) else {}
    parts = [f"{counts.get(s, 0)} {s}" for s in trials.STATUSES]
    return f"sweep finished in {time.time() - started:.0f} s: {len(frame)} trials ({', '.join(parts)})"


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """SIGTERM (`kill`, a batch scheduler's stop) ends a running Tuner as Ctrl-C does: Ray Tune stops
    the trials and the sweep keeps every one that ended. (Set once Ray has started: Ray's own handler
    would abort the driver.)"""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may handle signals
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Sweep:
    """One `hero-bench sweep`, as decided before Ray starts: the experiment and each trial's Config,
    its param space, where its results and Ray storage go (`experiment`: the sweep's folder in the
    storage), its sweep.json `marker`, whether it resumes (from plain files, or with `restore` through
    Ray's pickled state), more Ray Tune `callbacks`, and whether Ray's own output shows (`verbose`)."""

    config: object
    configs: TrialConfigs
    space: dict
    results_dir: Path
    experiment: str
    marker: dict
    resume: bool = False
    restore: bool = False
    callbacks: tuple = ()
    verbose: bool = False

    @property
    def table(self):
        return self.results_dir / "trials.csv"


def run(config, *, results_root="results", address=None, storage=None, resume=False, overwrite=False,
        trust_storage=False, configs=None, callbacks=(), verbose=False):
    """Run (or resume) a sweep and return its trials table. Writes results/<name>/trials.csv.

    Every check (the experiment, its search space, the results folder, what --resume would continue,
    the Ray address and resources) passes before anything is written or deleted, and the folder is
    locked for the sweep's lifetime. An interruption (Ctrl-C, SIGTERM) raises Interrupted once every
    trial that ended is in trials.csv. `trust_storage`: a resume of a sweep with random draws may
    read Ray's pickled experiment state (see hero_bench.sweep.resume).
    `configs`: the sweep's TrialConfigs, when the caller shares them with its `callbacks` (more Ray
    Tune callbacks, such as W&B tracking). `verbose`: Ray's own output as Ray prints it, instead of
    hero-bench's header and progress (hero_bench.sweep.console)."""
    started = time.time()
    results_dir = Path(results_root).resolve() / config.name
    space = search_space(config)
    configs = configs or TrialConfigs(config)
    configs.check(space)
    if trust_storage and not resume:
        raise ConfigError("--trust-storage applies only to --resume")
    folder.check(results_dir, resume, overwrite)
    marker = {"sweep_id": secrets.token_hex(4), "storage": storage, "config": config.to_dict()}
    restore = resume and grid_params(space) is None  # random draws: only Ray's pickled state knows the trials
    if resume:
        stored = folder.read_marker(results_dir)
        resuming.check_unchanged(stored["config"], config)
        marker.update(sweep_id=stored["sweep_id"], storage=storage or stored["storage"])
        if (results_dir / "trials.csv").exists():
            trials.parse(results_dir / "trials.csv")  # a table that cannot be read at all is refused now, before Ray starts
        if restore and not trust_storage:
            raise ConfigError(f"--resume: this sweep draws its trials at random (sweep.search {config.sweep.search} or a "
                              "distribution), which only Ray's pickled experiment state records; continuing it unpickles "
                              f"that state from {marker['storage']}, so pass --trust-storage if you trust that folder like any pickle")
    storage = marker["storage"] or str(Path("ray_results").resolve())
    marker["storage"] = storage if "://" in storage else str(Path(storage).resolve())
    sweep = Sweep(config, configs, space, results_dir, f"{marker['storage'].rstrip('/')}/{config.name}", marker,
                  resume, restore, tuple(callbacks), verbose)
    with console.ray_quiet(verbose):
        start_ray(address)
        check_resources(config.sweep.resources_per_trial, address)
        if restore and not tune.Tuner.can_restore(sweep.experiment):
            raise ConfigError(f"--resume: no Ray experiment state at {sweep.experiment}; run without --resume to start afresh")
        lock = folder.prepare(results_dir, resume, overwrite, marker)
        try:
            frame, total = execute(sweep)
        finally:
            lock.release()
    if len(frame) < total:
        again = "run the same command with --resume" + (" in place of --overwrite" if overwrite else "")
        raise Interrupted(f"interrupted: {len(frame)} of {total} trials finished; {again}")
    print(finished(frame, started))
    return frame


def execute(sweep):
    """Run the sweep's Tuner until every trial has ended or it is interrupted; returns the trials
    table (written to results/<name>/trials.csv) and how many trials the sweep has. A resumed grid
    sweep runs a new Tuner over the trials its plan leaves (hero_bench.sweep.resume); `restore`
    resumes one through Ray's pickled experiment state instead (Tuner.restore)."""
    config, table, space = sweep.config, sweep.table, sweep.space
    num_samples, checkpoints, recorded = config.sweep.num_samples, {}, None
    total = trial_count(space, num_samples)
    if sweep.resume and not sweep.restore:
        plan = resuming.plan(config, sweep.configs, space, table, sweep.experiment, sweep.marker["sweep_id"])
        trials.warn_damaged(table, plan.damaged)
        rows = {r[trials.TRIAL_ID]: r for r in plan.rows}
        write_rows(table, rows)  # only the rows kept: a damaged row's trial is run again
        if not plan.points:
            return trials.table(rows.values()), len(rows)
        space, num_samples, checkpoints = {POINT: tune.grid_search(plan.points)}, 1, plan.checkpoints
        total = len(rows) + len(plan.points)
    elif sweep.restore:
        recorded = {i: r for i, r in read_rows(table).items() if r[trials.STATUS] in trials.FINAL_STATUSES}
    fn = tune.with_resources(
        tune.with_parameters(trainable, base=config, sweep_id=sweep.marker["sweep_id"], checkpoints=checkpoints,
                             recorded=recorded, verbose=sweep.verbose),
        vars(config.sweep.resources_per_trial))
    finished_before = total - trial_count(space, num_samples) if sweep.resume and not sweep.restore else 0
    progress = []
    if not sweep.verbose:
        at_once = console.concurrency(config.sweep.resources_per_trial, config.sweep.max_concurrent_trials)
        print(console.header(config, total, finished_before, at_once, sweep.results_dir, sweep.experiment), flush=True)
        progress = [console.Progress(total, finished_before, config.sweep.metric)]
    if not sweep.restore:
        sheet = TrialsTable(sweep.configs, table)
        run_config = tune.RunConfig(
            name=config.name, storage_path=sweep.marker["storage"],
            callbacks=[*ray_loggers(config.tracking), sheet, *progress, *sweep.callbacks],
            failure_config=tune.FailureConfig(max_failures=config.sweep.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2), verbose=1 if sweep.verbose else 0,
        )
        tuner = tune.Tuner(fn, param_space=space, tune_config=make_tune_config(config, num_samples), run_config=run_config)
    else:
        # the TrialsTable, like every callback, comes back from the pickled state; it keeps trials.csv
        tuner = tune.Tuner.restore(sweep.experiment, trainable=fn, resume_errored=True)
    with without_auto_loggers(), ray_resume_advice_muted(), sigterm_as_ctrl_c():
        try:
            tuner.fit()
        except KeyboardInterrupt:  # a second Ctrl-C: Ray stops at once, and the trials that ended are kept
            pass
    for bar in progress:
        bar.close()
    rows = read_rows(table) if sweep.restore else sheet.rows
    write_rows(table, rows)
    return trials.table(rows.values()), total
