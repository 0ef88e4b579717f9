"""The Tuner of a sweep: search algorithm, scheduler, loggers, failure policy, the trials table and
the results folder. `run` runs (or resumes) a sweep and returns its trials table."""
import contextlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import pandas as pd
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

from hero_bench import trials
from hero_bench.atomic import write_atomic
from hero_bench.errors import ConfigError
from hero_bench.sweep.cluster import check_resources, start_ray
from hero_bench.sweep.space import TrialConfigs, search_space, trial_params
from hero_bench.sweep.trainable import trainable

# Keeping only the last checkpoints makes Ray snapshot its experiment state at each one; with short
# trials that is frequent but cheap, so its warning about it is noise here.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


class TrialsTable(tune.Callback):
    """Keeps results/<name>/trials.csv current: rewritten atomically whenever a trial ends.

    Rows are kept by trial_id, so a trial's row is built once (not on every rewrite), a trial never
    appears twice, and the rows already in the file when a sweep resumes stay as they are.
    """

    def __init__(self, configs, path):
        self.configs, self.path = configs, Path(path)
        self.rows = {}

    def setup(self, **info):
        self.rows = trials.recorded(self.path)

    def add(self, trial, error):
        if trial.trial_id not in self.rows:
            self.rows[trial.trial_id] = row(self.configs, trial.trial_id, trial.config, trial.last_result, error)
        try:
            write_atomic(self.path, pd.DataFrame(list(self.rows.values())).to_csv(index=False))
        except ConfigError as exc:
            # Raised into Ray it would count as a failure of this trial. The sweep goes on (Ray keeps
            # every result) and its final write of trials.csv reports the error if it persists.
            warnings.warn(f"{exc}; trying again when the next trial ends", stacklevel=2)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.add(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.add(trial, "error")


def row(configs, trial_id, params, result, error):
    return trials.row(trial_id, configs.get(params), trial_params(params), result, error)


def make_tune_config(sweep):
    scheduler, search_alg = None, None
    if sweep.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="training_iteration", grace_period=sweep.asha.grace_period, reduction_factor=sweep.asha.reduction_factor)
    if sweep.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch()
    return tune.TuneConfig(
        metric=sweep.metric, mode=sweep.mode, scheduler=scheduler, search_alg=search_alg,
        num_samples=sweep.num_samples, max_concurrent_trials=sweep.max_concurrent_trials,
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


def prepare_results(results_dir, resume, overwrite):
    """Refuse to mix two sweeps' trials in one folder unless told what to do."""
    trials_csv = results_dir / "trials.csv"
    if trials_csv.exists() and not (resume or overwrite):
        raise ConfigError(f"{results_dir} already holds a sweep's trials.csv; pass --resume to continue it or --overwrite to replace it")
    if overwrite and results_dir.exists():
        shutil.rmtree(results_dir)


def summarize(frame, sweep, started):
    counts = frame[trials.STATUS].value_counts() if len(frame) else {}
    parts = [f"{counts.get(s, 0)} {s}" for s in trials.STATUSES]
    lines = [f"sweep finished in {time.time() - started:.0f} s: {len(frame)} trials ({', '.join(parts)})"]
    done = frame[frame[trials.STATUS] == "completed"] if len(frame) else frame
    if len(done) and sweep.metric in done:
        best = done.loc[done[sweep.metric].idxmax() if sweep.mode == "max" else done[sweep.metric].idxmin()]
        keys = [k for k in trials.COLUMNS if k not in (trials.NAME, trials.EPOCHS)]
        lines.append(f"best by {sweep.metric} ({sweep.mode}): {best[sweep.metric]:.4g} with " + ", ".join(f"{k}={best[k]}" for k in keys))
    return "\n".join(lines)


def run(config, *, results_root="results", address=None, storage=None, resume=False, overwrite=False,
        configs=None, callbacks=()):
    """Run (or resume) a sweep and return its trials table. Writes results/<name>/trials.csv.

    `configs`: the sweep's TrialConfigs, when the caller shares them with its `callbacks` (more Ray
    Tune callbacks, such as W&B tracking)."""
    started = time.time()
    results_dir = Path(results_root).resolve() / config.name
    meta_path = results_dir / "sweep.json"
    if resume:
        if not meta_path.exists():
            raise ConfigError(f"--resume: nothing to resume, {meta_path} does not exist; run without --resume first")
        storage = storage or json.loads(meta_path.read_text())["storage"]
    storage = storage or str(Path("ray_results").resolve())
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    experiment = f"{storage.rstrip('/')}/{config.name}"
    space = search_space(config)
    configs = configs or TrialConfigs(config)
    configs.check(space)
    prepare_results(results_dir, resume, overwrite)
    start_ray(address)
    check_resources(config.sweep.resources_per_trial, address)
    recorded = trials.recorded(results_dir / "trials.csv") if resume else {}
    fn = tune.with_resources(tune.with_parameters(trainable, base=config, recorded=recorded), vars(config.sweep.resources_per_trial))
    if resume and not tune.Tuner.can_restore(experiment):
        raise ConfigError(f"--resume: no Ray experiment state at {experiment}; run without --resume to start afresh")

    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(json.dumps({"storage": storage, "experiment": experiment}, indent=2) + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot write to {results_dir}: {exc.strerror or exc}; choose another parent folder with --results") from None
    table = TrialsTable(configs, results_dir / "trials.csv")
    run_config = tune.RunConfig(
        name=config.name, storage_path=storage, callbacks=[*ray_loggers(config.tracking), table, *callbacks],
        failure_config=tune.FailureConfig(max_failures=config.sweep.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2), verbose=1,
    )
    if resume:
        tuner = tune.Tuner.restore(experiment, trainable=fn, resume_errored=True)
    else:
        tuner = tune.Tuner(fn, param_space=space, tune_config=make_tune_config(config.sweep), run_config=run_config)
    with without_auto_loggers():
        grid = tuner.fit()
    rows = []
    for i, r in enumerate(grid):
        trial_id = r.metrics.get(trials.TRIAL_ID, str(i))
        rows.append(recorded.get(trial_id) or row(configs, trial_id, r.config, r.metrics, r.error))
    frame = pd.DataFrame(rows)
    write_atomic(results_dir / "trials.csv", frame.to_csv(index=False))
    print(summarize(frame, config.sweep, started))
    return frame
