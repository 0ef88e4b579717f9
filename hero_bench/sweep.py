"""`hero-bench sweep`: one Ray Tune trial per (configuration, seed), locally or on a Ray cluster.

The experiment file's `sweep.space` maps dotted config keys to a list (a grid axis) or to a
distribution `{dist: uniform|loguniform|randint|choice, ...}`; `sweep.seeds` is one more grid axis
(`train.seed`). The trainable is `hero_bench.train.run_trial`; this module is the only place, with
`tracking`, that knows Ray exists.
"""
import contextlib
import copy
import itertools
import json
import os
import shutil
import socket
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
import ray
import torch
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

from hero_bench import config as config_module
from hero_bench.atomic import write_atomic
from hero_bench.errors import ConfigError
from hero_bench.train import run_trial

ALWAYS_COLUMNS = [
    "name", "data.name", "model.name", "optimizer.name", "optimizer.radius", "optimizer.hessian_coef",
    "optimizer.adaptive", "optimizer.hvp", "optimizer.hessian_every", "data.label_noise", "train.lr",
    "train.epochs", "train.seed",
]
# Per-epoch bookkeeping that Ray adds or that only matters while a trial runs; not trial results.
NOT_METRICS = {
    "epoch", "lr", "epoch_time_s", "error", "status", "timestamp", "checkpoint_dir_name", "done",
    "training_iteration", "trial_id", "date", "time_this_iter_s", "time_total_s", "pid", "hostname",
    "node_ip", "time_since_restore", "experiment_tag", "iterations_since_restore", "config", "should_checkpoint",
}
DISTRIBUTIONS = {
    "uniform": (("low", "high"), tune.uniform),
    "loguniform": (("low", "high"), tune.loguniform),
    "randint": (("low", "high"), tune.randint),
    "choice": (("values",), tune.choice),
}
STATE_FILE = "state.pt"
# Keeping only the last checkpoints makes Ray snapshot its experiment state at each one; with short
# trials that is frequent but cheap, so its warning about it is noise here.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def search_space(config):
    """Ray param_space over dotted keys. Every grid value is validated here, before any trial runs.

    A list of grids (`sweep.space: [{...}, {...}]`) runs their union: Ray grid-searches one
    `point` axis whose values are the grids' explicit points (each a dict of dotted keys).
    """
    sweep, base = config.sweep, config.to_dict()
    grid = sweep.search == "grid" or sweep.search == "random"
    if isinstance(sweep.space, list):
        if sweep.search != "grid":
            raise ConfigError("sweep.space as a list of grids (their union) needs sweep.search: grid")
        return {"point": tune.grid_search(union_points(sweep.space, base)), "train.seed": tune.grid_search(sweep.seeds)}
    space = {}
    for key, spec in sweep.space.items():
        where = f"sweep.space.{key}"
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"{where} is an empty list: a grid axis needs at least one value")
            for value in spec:
                check_value(base, key, value, where)
            space[key] = tune.grid_search(spec) if sweep.search == "grid" else tune.choice(spec)
        elif isinstance(spec, dict):
            space[key] = distribution(spec, where)
        else:
            check_value(base, key, spec, where)  # a constant: allowed, simply overrides the key
            space[key] = spec
    if "train.seed" in space:
        raise ConfigError("sweep.space.train.seed: list seeds under sweep.seeds instead")
    space["train.seed"] = tune.grid_search(sweep.seeds) if grid else tune.choice(sweep.seeds)
    return space


def union_points(grids, base):
    """Every point of every grid (lists are axes, scalars constants), in order, duplicates dropped."""
    points = []
    for index, spec in enumerate(grids):
        where = f"sweep.space[{index}]"
        if not spec:
            raise ConfigError(f"{where} is empty: each grid of the list needs at least one key")
        axes = {}
        for key, values in spec.items():
            values = values if isinstance(values, list) else [values]
            if not values:
                raise ConfigError(f"{where}.{key} is an empty list: a grid axis needs at least one value")
            for value in values:
                check_value(base, key, value, f"{where}.{key}")
            axes[key] = values
        if "train.seed" in axes:
            raise ConfigError(f"{where}.train.seed: list seeds under sweep.seeds instead")
        for combination in itertools.product(*axes.values()):
            point = dict(zip(axes, combination))
            if point not in points:
                points.append(point)
    return points


def trial_params(params):
    """A trial's swept values as one dict of dotted keys (a union sweep nests them under `point`)."""
    return {**params.get("point", {}), **{k: v for k, v in params.items() if k != "point"}}


def check_value(base, key, value, where):
    raw = copy.deepcopy(base)
    raw["sweep"]["space"] = {}
    try:
        config_module.set_dotted(raw, key, value)
        config_module.from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def distribution(spec, where):
    dist = spec.get("dist")
    if dist not in DISTRIBUTIONS:
        raise ConfigError(f"{where}.dist must be one of {', '.join(DISTRIBUTIONS)}, got {dist!r}")
    names, factory = DISTRIBUTIONS[dist]
    extra = sorted(set(spec) - {"dist", *names})
    if extra or any(n not in spec for n in names):
        raise ConfigError(f"{where}: dist {dist} takes exactly {', '.join(names)}; got {', '.join(sorted(spec))}")
    if dist == "choice":
        if not isinstance(spec["values"], list) or not spec["values"]:
            raise ConfigError(f"{where}.values must be a non-empty list")
        return factory(spec["values"])
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
        raise ConfigError(f"{where}: low and high must be numbers with low < high, got {low!r}, {high!r}")
    if dist == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0, got {low!r}")
    return factory(low, high)


def trial_config(base, params):
    raw = copy.deepcopy(base)
    raw["sweep"]["space"] = {}
    for key, value in trial_params(params).items():
        config_module.set_dotted(raw, key, value)
    return config_module.from_dict(raw)


def trainable(params, base, recorded=None):
    """Ray Tune function trainable: run_trial with per-epoch tune.report and checkpoints.

    `recorded`: trial_id -> trials.csv row of trials that ended before the sweep was interrupted
    (see `recorded_rows`). Ray's own snapshot of trial statuses can lag behind that file, so Ray may
    start such a trial again on --resume; it is not trained again: it reports its recorded status
    and sweep metric once and ends, and trials.csv keeps its recorded row.
    """
    config = trial_config(base, params)
    row = (recorded or {}).get(tune.get_context().get_trial_id())
    if row is not None:
        # one result, so Ray's record of the trial carries its id (Ray adds it) and the sweep metric
        tune.report({"status": row["status"], config.sweep.metric: row.get(config.sweep.metric, float("nan"))})
        return

    def report(metrics, state):
        if metrics["status"] == "diverged":
            # Ray requires the sweep metric in every result; a diverged trial has no valid value,
            # and NaN is never chosen as best by Ray.
            metrics[config.sweep.metric] = float("nan")
        if state is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / STATE_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    resume, checkpoint = None, tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_state(folder)
    run_trial(config, report=report, resume=resume)


def load_state(folder):
    """A trial checkpoint's state. weights_only=True: tensors and plain data, never pickled code."""
    return torch.load(Path(folder) / STATE_FILE, weights_only=True)


def flat_config(config):
    out = {}
    for section, values in config.to_dict().items():
        if isinstance(values, dict):
            for key, value in values.items():
                out[f"{section}.{key}"] = value
        else:
            out[section] = values
    return out


def trial_row(base, trial_id, params, result, error):
    """One trials.csv row: the trial's config columns, its status and its last reported metrics."""
    params = trial_params(params)
    config = flat_config(trial_config(base, params))
    row = {"trial_id": trial_id}
    row.update({key: config[key] for key in ALWAYS_COLUMNS})
    row.update({key: value for key, value in params.items() if key not in row})
    result = result or {}
    if error:
        status = "failed"
    elif result.get("status") == "diverged":
        status = "diverged"
    elif result.get("epoch", 0) < config["train.epochs"]:
        status = "stopped"  # ended early by the scheduler (ASHA)
    else:
        status = "completed"
    row["status"] = status
    row["diverged_epoch"] = result.get("diverged_epoch")
    row["epochs_done"] = result.get("epoch", 0) if status != "diverged" else result.get("epochs_done")
    row.update({k: v for k, v in result.items() if k not in NOT_METRICS and k not in row and not isinstance(v, dict)})
    if error:
        row["error"] = str(error).strip().splitlines()[-1][:300] if str(error).strip() else "error"
    return row


FINAL_STATUSES = ("completed", "diverged", "stopped")


def recorded_rows(path):
    """trial_id -> row of the trials in trials.csv at `path` that ended for good (failed ones are
    retried by --resume, so they are not kept)."""
    if not Path(path).exists():
        return {}
    frame = pd.read_csv(path, dtype={"trial_id": str})
    return {row["trial_id"]: row for row in frame.to_dict("records") if row["status"] in FINAL_STATUSES}


class TrialsTable(tune.Callback):
    """Keeps results/<name>/trials.csv current: rewritten atomically whenever a trial ends.

    Rows are kept by trial_id, so a trial's row is built once (not on every rewrite), a trial never
    appears twice, and the rows already in the file when a sweep resumes stay as they are.
    """

    def __init__(self, base, path):
        self.base, self.path = base, Path(path)
        self.rows = {}

    def setup(self, **info):
        self.rows = recorded_rows(self.path)

    def add(self, trial, error):
        if trial.trial_id not in self.rows:
            self.rows[trial.trial_id] = trial_row(self.base, trial.trial_id, trial.config, trial.last_result, error)
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


def check_address(address):
    """Fail within seconds, with a clear message, when a Ray address cannot be reached."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address must be 'auto', host:port or ray://host:port, got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as exc:
        raise ConfigError(f"--address {address}: cannot reach the Ray cluster ({exc.strerror or exc}); is `ray start --head` running there?") from None


def start_ray(address):
    if ray.is_initialized():
        return
    if address is None:
        # "local": always a new Ray of this machine's own, never one a `ray start` left running here
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False)
        return
    check_address(address)
    try:
        ray.init(address=address)
    except ConnectionError as exc:
        raise ConfigError(f"--address {address}: {exc}") from None
    total = ray.cluster_resources()
    nodes = sum(node["Alive"] for node in ray.nodes())
    print(f"joined the Ray cluster at {address}: {nodes} nodes, {total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs")


def check_resources(resources, address):
    """Refuse a trial that cannot fit the local machine; on a cluster (--address) only warn, since
    an autoscaler may still add the nodes it needs."""
    total = ray.cluster_resources()
    for name, wanted in (("gpu", resources.gpu), ("cpu", resources.cpu)):
        have = total.get(name.upper(), 0)
        if wanted > 0 and have < wanted:
            message = f"sweep.resources_per_trial.{name} is {wanted:g} but the Ray cluster has {have:g} {name.upper()}s"
            if address is None:
                raise ConfigError(f"{message}; lower it or join a cluster that has them (--address)")
            warnings.warn(f"{message} now; trials wait until the cluster (its autoscaler) provides them", stacklevel=2)


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
    counts = frame["status"].value_counts() if len(frame) else {}
    parts = [f"{counts.get(s, 0)} {s}" for s in ("completed", "stopped", "diverged", "failed")]
    lines = [f"sweep finished in {time.time() - started:.0f} s: {len(frame)} trials ({', '.join(parts)})"]
    done = frame[frame["status"] == "completed"] if len(frame) else frame
    if len(done) and sweep.metric in done:
        best = done.loc[done[sweep.metric].idxmax() if sweep.mode == "max" else done[sweep.metric].idxmin()]
        keys = [k for k in ALWAYS_COLUMNS if k not in ("name", "train.epochs")]
        lines.append(f"best by {sweep.metric} ({sweep.mode}): {best[sweep.metric]:.4g} with " + ", ".join(f"{k}={best[k]}" for k in keys))
    return "\n".join(lines)


def run(config, *, results_root="results", address=None, storage=None, resume=False, overwrite=False, callbacks=()):
    """Run (or resume) a sweep and return its trials table. Writes results/<name>/."""
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
    prepare_results(results_dir, resume, overwrite)
    start_ray(address)
    check_resources(config.sweep.resources_per_trial, address)
    base = config.to_dict()
    recorded = recorded_rows(results_dir / "trials.csv") if resume else {}
    fn = tune.with_resources(tune.with_parameters(trainable, base=base, recorded=recorded), vars(config.sweep.resources_per_trial))
    if resume and not tune.Tuner.can_restore(experiment):
        raise ConfigError(f"--resume: no Ray experiment state at {experiment}; run without --resume to start afresh")

    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(json.dumps({"storage": storage, "experiment": experiment}, indent=2) + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot write to {results_dir}: {exc.strerror or exc}; choose another parent folder with --results") from None
    table = TrialsTable(base, results_dir / "trials.csv")
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
        trial_id = r.metrics.get("trial_id", str(i))
        rows.append(recorded.get(trial_id) or trial_row(base, trial_id, r.config, r.metrics, r.error))
    frame = pd.DataFrame(rows)
    write_atomic(results_dir / "trials.csv", frame.to_csv(index=False))
    print(summarize(frame, config.sweep, started))
    return frame


def main(args):
    overrides = list(args.set)
    if args.max_concurrent is not None:
        overrides.append(f"sweep.max_concurrent_trials={args.max_concurrent}")
    if args.wandb is not None:
        overrides.append(f"tracking.wandb={args.wandb}")
    config = config_module.load(args.file, overrides)
    from hero_bench import leaderboard, tracking

    callbacks = tracking.callbacks(config, Path(args.results).resolve() / config.name)
    owns_ray = not ray.is_initialized()  # a Ray the caller started is the caller's to shut down
    try:
        frame = run(config, results_root=args.results, address=args.address, storage=args.storage,
                    resume=args.resume, overwrite=args.overwrite, callbacks=callbacks)
        results_dir = Path(args.results) / config.name
        for path in leaderboard.write(results_dir):
            print(f"wrote {path}")
        for callback in callbacks:
            callback.finish_sweep(results_dir)
    finally:
        if owns_ray and ray.is_initialized():
            ray.shutdown()
    return 0 if len(frame) and (frame["status"] != "failed").all() else 1
