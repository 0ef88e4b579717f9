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

import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

from hero_bench import plugins, trials
from hero_bench.atomic import write_atomic
from hero_bench.errors import ConfigError, Interrupted
from hero_bench.results import outputs
from hero_bench.sweep import console, folder, preflight, resume as resuming, search, study
from hero_bench.sweep import stages as staging
from hero_bench.sweep import storage as ray_storage
from hero_bench.sweep.cluster import check_resources, local_cpus, ray_running
from hero_bench.sweep.rungs import ConfigurationASHA
from hero_bench.sweep.space import POINT, TrialConfigs, points, trial_count, trial_id, trial_params, trial_stage
from hero_bench.sweep.trainable import reported_epochs, trainable
from hero_bench.trials import SEED

# Keeping only the last checkpoints makes Ray snapshot its experiment state at each one; with short
# trials that is frequent but cheap, so its warning about it is noise here.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
HISTORY = "history.csv"


class TrialsTable(tune.Callback):
    """Keeps results/<name>/trials.csv current: rewritten atomically whenever a trial ends; and appends
    every epoch a report carries (hero_bench.sweep.trainable.reported_epochs) to
    results/<name>/history.csv as it arrives.

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

    def on_trial_result(self, iteration, trials, trial, result, **info):
        record_epoch(self.path.with_name(HISTORY), trial_id(trial.config, trial.trial_id), result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.add(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.add(trial, console.error_text(trial))


def record_epoch(path, trial_id, result):
    """Append the epochs of one report to history.csv (a failure to write costs a warning, never the trial)."""
    lines = [line for line in (trials.history_row(trial_id, epoch) for epoch in reported_epochs(result)) if line is not None]
    if lines:
        try:
            trials.append_history(path, lines)
        except OSError as exc:
            warnings.warn(f"cannot append to {path}: {exc.strerror or exc}", stacklevel=2)


def row(configs, trial_id, params, result, error):
    return trials.row(trial_id, configs.get(params), trial_params(params), result, error, trial_stage(params))


def read_rows(path):
    """trial id -> row of every valid row of the trials table at `path` (none if there is none)."""
    return {r[trials.TRIAL_ID]: r for r in trials.parse(path)[0].to_dict("records")} if Path(path).exists() else {}


def write_rows(path, rows):
    if rows:  # a table without rows would have no header to read back
        write_atomic(path, trials.table(rows.values()).to_csv(index=False))


def write_history(folder, rows):
    """history.csv with one row per epoch of every trial in `rows`, whatever retries repeated."""
    path = folder / HISTORY
    if path.exists():
        write_atomic(path, trials.history_table(path, rows).to_csv(index=False))


def make_tune_config(config, num_samples, search_alg=None):
    sweep = config.sweep
    return tune.TuneConfig(
        metric=sweep.metric, mode=sweep.mode, scheduler=ConfigurationASHA(config) if sweep.scheduler == "asha" else None,
        search_alg=search_alg, num_samples=num_samples, max_concurrent_trials=sweep.max_concurrent_trials,
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


# What Ray Tune logs when a sweep is interrupted, by logger: its advice (Tuner.restore, press Ctrl-C
# again) does not apply, and the trials that never started have no metrics for its result grid, which
# hero-bench does not use. hero-bench's one line says what happened and how to go on.
RAY_INTERRUPTION_LINES = {
    "ray.tune.tune": ("Experiment has been interrupted", "Trials did not complete", "Stop signal received"),
    "ray.tune.analysis.experiment_analysis": ("Failed to fetch metrics",),
}


class Muted(logging.Filter):
    """Drops a logger's records whose message starts with one of `prefixes`."""

    def __init__(self, prefixes):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record):
        return not record.getMessage().startswith(self.prefixes)


@contextlib.contextmanager
def ray_interruption_muted():
    muted = {logging.getLogger(name): Muted(prefixes) for name, prefixes in RAY_INTERRUPTION_LINES.items()}
    for logger, mute in muted.items():
        logger.addFilter(mute)
    try:
        yield
    finally:
        for logger, mute in muted.items():
            logger.removeFilter(mute)


def finished(frame, started):
    """`sweep finished in 139 s: 96 trials (96 completed, 0 stopped, 0 diverged, 0 failed)`"""
    counts = frame[trials.STATUS].value_counts() if len(frame) else {}
    parts = [f"{counts.get(s, 0)} {s}" for s in trials.STATUSES]
    return f"sweep finished in {time.time() - started:.0f} s: {len(frame)} trials ({', '.join(parts)})"


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """SIGTERM (`kill`, a batch scheduler's stop) ends a sweep as Ctrl-C does, at any moment: a running
    Tuner stops its trials and the sweep keeps every one that ended; before, the sweep stops where it
    is, and a Ray that was starting is shut down. (ray.init replaces the handler with one that exits
    at once; hero_bench.sweep.cluster.init puts this one back.)"""
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
    its param space and Ray's num_samples over it (hero_bench.sweep.search), where its results and Ray
    storage go (`experiment`: the sweep's folder in the storage), its sweep.json `marker`, whether it
    resumes (from plain files), more Ray Tune `callbacks`, and whether Ray's own output shows (`verbose`)."""

    config: object
    configs: TrialConfigs
    space: dict
    num_samples: int
    results_dir: Path
    experiment: str
    marker: dict
    resume: bool = False
    callbacks: tuple = ()
    verbose: bool = False

    @property
    def table(self):
        return self.results_dir / "trials.csv"


def run(config, *, results_root="results", address=None, storage=None, resume=False, overwrite=False,
        configs=None, callbacks=(), verbose=False):
    """Run (or resume) a sweep and return its trials table. Writes results/<name>/trials.csv.

    Every check (the experiment, its search space, the results folder, what --resume would continue,
    where it writes and whose the storage folder is, the dry run, the Ray address and resources)
    passes before anything is written or deleted, as many as can before Ray starts
    (`check_before_ray`), and the folder is locked for the sweep's lifetime. A folder as the
    repository ships it (folder.shipped) is replaced as with --overwrite, with a line that says so.
    Ray is shut down when it returns or raises (hero_bench.sweep.cluster.ray_running). An
    interruption (Ctrl-C, SIGTERM, at any moment) raises Interrupted once every trial that ended is in
    trials.csv. Nothing is read from Ray's pickled state (hero_bench.sweep.resume).
    `configs`: the sweep's TrialConfigs, when the caller shares them with its `callbacks` (more Ray
    Tune callbacks, such as W&B tracking). `verbose`: Ray's own output as Ray prints it, instead of
    hero-bench's header and progress (hero_bench.sweep.console)."""
    started = time.time()
    results_dir = Path(results_root).resolve() / config.name
    prepared = search.prepare(config)
    configs = configs or TrialConfigs(config)
    trial_configs = configs.check(prepared.checked)
    replaces_shipped = not (resume or overwrite) and folder.shipped(results_dir)
    folder.check(results_dir, resume, overwrite or replaces_shipped)
    marker = {"sweep_id": secrets.token_hex(4), "storage": storage, "config": config.to_dict()}
    if prepared.draws is not None:
        marker["draws"] = prepared.draws
    if resume:
        stored = folder.read_marker(results_dir)
        resuming.check_unchanged(stored["config"], config)
        resuming.check_draws(stored.get("draws"), prepared.draws, results_dir / folder.MARKER)
        marker.update(sweep_id=stored["sweep_id"], storage=storage or stored["storage"], stages=stored.get("stages", []))
        if (results_dir / "trials.csv").exists():
            trials.parse(results_dir / "trials.csv")  # a table that cannot be read at all is refused now, before Ray starts
            if config.sweep.search == "optuna" and not (results_dir / folder.JOURNAL).is_file():
                raise ConfigError(f"--resume: {results_dir / folder.JOURNAL} is missing, and with it the Optuna studies that "
                                  "chose this sweep's configurations; start the sweep again with --overwrite")
    storage = marker["storage"] or str(Path("ray_results").resolve())
    marker["storage"] = storage if "://" in storage else str(Path(storage).resolve())
    sweep = Sweep(config, configs, prepared.space, prepared.num_samples, results_dir,
                  f"{marker['storage'].rstrip('/')}/{config.name}", marker, resume, tuple(callbacks), verbose)
    lock = None
    try:
        with sigterm_as_ctrl_c():
            check_before_ray(sweep, trial_configs, address)
            with console.ray_quiet(verbose), ray_running(address, plugins.shipped(config.plugins)):
                check_resources(config.sweep.resources_per_trial, address)
                lock = folder.prepare(results_dir, resume, overwrite or replaces_shipped, marker)
                if replaces_shipped:
                    print(f"replaced {results_dir}, the run the repository ships: `git checkout -- {results_dir}` brings it back", flush=True)
                try:
                    ray_storage.claim(sweep.experiment, results_dir, marker["sweep_id"])
                    outputs.write_hypotheses(results_dir, config.to_dict()["hypotheses"])
                    frame, total = execute(sweep)
                finally:
                    lock.release()
    except KeyboardInterrupt:  # before Tune ran (checks, Ray starting), or a second Ctrl-C after it
        resumable = resume or lock is not None  # else the results folder is as it was
        done = len(read_rows(sweep.table)) if resumable else 0
        raise Interrupted(interrupted(done, trial_count(prepared.space, prepared.num_samples), resumable, overwrite)) from None
    if len(frame) < total:
        raise Interrupted(interrupted(len(frame), total, True, overwrite))
    print(finished(frame, started))
    for line in console.failures(frame, results_dir / console.ERRORS):
        print(line)
    return frame


def interrupted(done, total, resumable, overwrite):
    """`interrupted: 8 of 32 trials finished; run the same command with --resume`: what was kept, how
    to go on. Before the results folder was touched (`resumable` false), the same command again."""
    if not resumable:
        return f"interrupted: {done} of {total} trials finished; nothing was changed: run the same command again"
    return f"interrupted: {done} of {total} trials finished; run the same command with --resume" + (
        " in place of --overwrite" if overwrite else "")


def check_before_ray(sweep, trial_configs, address):
    """What is checked before Ray starts and before the results folder is touched: that the results
    folder and the Ray storage can be written, that the storage folder is no other sweep's, that a
    trial fits this machine's CPUs (a local Ray), and the dry run of its trials (hero_bench.sweep.preflight)."""
    for target, advice in ((sweep.results_dir, "choose another parent folder with --results"),
                           (sweep.marker["storage"], "choose another --storage; nothing was changed")):
        why = ray_storage.unwritable(target)
        if why:
            raise ConfigError(f"cannot write to {target}: {why}; {advice}")
    ray_storage.check_owner(sweep.experiment, sweep.results_dir, sweep.marker["sweep_id"], sweep.resume)
    if address is None:
        resources = sweep.config.sweep.resources_per_trial
        if not ray.is_initialized():  # the sweep's own Ray will have this machine's CPUs
            check_resources(resources, address, {"CPU": local_cpus()}, kinds=("cpu",))
        preflight.dry_run(trial_configs, resources.gpu)


def execute(sweep):
    """Run the sweep until every trial of every stage has ended or it is interrupted; returns the
    trials table (written to results/<name>/trials.csv) and how many trials the sweep has so far.

    The grid (or the configurations a search drew) runs first; each later stage
    (hero_bench.sweep.stages) is decided once the trials before it have ended, recorded in
    sweep.json and run by a Tuner of its own. A resumed sweep runs a new Tuner over the trials of the
    grid and of the recorded stages that its plan leaves (hero_bench.sweep.resume), then goes on
    deciding stages. An optuna sweep's searcher (hero_bench.sweep.study) asks the configurations as it
    runs; a resumed one first runs the seeds left of those it had asked."""
    if sweep.config.sweep.search == "optuna":
        return asked(sweep)
    config, table = sweep.config, sweep.table
    grid = points(sweep.space, sweep.num_samples)
    stages = staging.decided(sweep.marker)
    if sweep.resume:
        known = grid + [p for stage in stages for p in staging.tagged(stage)]
        plan = resuming.plan(sweep.configs, known, table, sweep.experiment, sweep.marker["sweep_id"])
        trials.warn_damaged(table, plan.damaged)
        rows = {r[trials.TRIAL_ID]: r for r in plan.rows}
        write_rows(table, rows)  # only the rows kept: a damaged row's trial is run again
        total = len(known)
        if plan.points:
            rows = run_trials(sweep, {POINT: tune.grid_search(plan.points)}, 1, plan.checkpoints, total, len(rows))
    else:
        total = len(grid)
        rows = run_trials(sweep, sweep.space, sweep.num_samples, {}, total, 0)
    while len(rows) == total:  # every trial so far has ended: what comes next?
        # decided from trials.csv as written, whose values are as every reader of the table sees them
        # (a list such as model.args.hidden is its text there, as pandas can group it)
        stage = staging.next_stage(config, sweep.configs, grid, stages, trials.parse(sweep.table)[0])
        if stage is None:
            break
        stages.append(stage)
        sweep.marker["stages"] = [s.as_json() for s in stages]
        folder.write_marker(sweep.results_dir, sweep.marker)
        if not sweep.verbose:
            print(console.stage_header(stage.name, stage.points, config), flush=True)
        if stage.points:
            rows = run_trials(sweep, {POINT: tune.grid_search(staging.tagged(stage))}, 1, {}, total + len(stage.points), total)
            total += len(stage.points)
    write_history(sweep.results_dir, rows)
    return trials.table(rows.values()), total


def asked(sweep):
    """execute() of an optuna sweep: its searcher asks the configurations."""
    config, table, space, num_samples = sweep.config, sweep.table, sweep.space, sweep.num_samples
    searcher = study.Searcher(config, sweep.results_dir / folder.JOURNAL)
    checkpoints, total, rows = {}, trial_count(space, num_samples), {}
    if sweep.resume:
        opened = points({POINT: tune.grid_search(searcher.open()), SEED: tune.grid_search(config.sweep.seeds)}, 1)
        plan = resuming.plan(sweep.configs, opened, table, sweep.experiment, sweep.marker["sweep_id"])
        trials.warn_damaged(table, plan.damaged)
        rows = {r[trials.TRIAL_ID]: r for r in plan.rows}
        write_rows(table, rows)  # only the rows kept: a damaged row's trial is run again
        unasked = total - len(opened)  # trials of configurations to ask
        if not plan.points and not unasked:
            return trials.table(rows.values()), len(rows)
        searcher.backlog = plan.points  # run before any new configuration is asked
        space, num_samples = {}, len(plan.points) + unasked
        checkpoints, total = plan.checkpoints, len(rows) + len(plan.points) + unasked
    rows = run_trials(sweep, space, num_samples, checkpoints, total, len(rows), searcher)
    write_history(sweep.results_dir, rows)
    return trials.table(rows.values()), total


def run_trials(sweep, space, num_samples, checkpoints, total, finished_before, searcher=None):
    """One Tuner over `space`, num_samples times (or as many trials as `searcher` asks); returns the rows
    of trials.csv when it ends. `total`, `finished_before`: the sweep's trials for the progress line."""
    config, table = sweep.config, sweep.table
    fn = tune.with_resources(
        tune.with_parameters(trainable, base=config, sweep_id=sweep.marker["sweep_id"], checkpoints=checkpoints,
                             verbose=sweep.verbose),
        vars(config.sweep.resources_per_trial))
    progress = []
    if not sweep.verbose:
        if finished_before == 0 or sweep.resume:
            at_once = console.concurrency(config.sweep.resources_per_trial, config.sweep.max_concurrent_trials)
            print(console.header(config, total, finished_before, at_once, sweep.results_dir, sweep.experiment), flush=True)
        progress = [console.Progress(total, finished_before, config.sweep.metric, sweep.results_dir / console.ERRORS,
                                     config.sweep.max_failures)]
    sheet = TrialsTable(sweep.configs, table)
    run_config = tune.RunConfig(
        name=config.name, storage_path=sweep.marker["storage"],
        callbacks=[*ray_loggers(config.tracking), sheet, console.ErrorLog(sweep.results_dir), *progress, *sweep.callbacks],
        failure_config=tune.FailureConfig(max_failures=config.sweep.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2), verbose=1 if sweep.verbose else 0,
    )
    tuner = tune.Tuner(fn, param_space=space, tune_config=make_tune_config(config, num_samples, searcher), run_config=run_config)
    with without_auto_loggers(), ray_interruption_muted():
        try:
            tuner.fit()
        except KeyboardInterrupt:  # a second Ctrl-C: Ray stops at once, and the trials that ended are kept
            pass
    for bar in progress:
        bar.close()
    write_rows(table, sheet.rows)
    return sheet.rows
