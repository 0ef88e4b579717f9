"""The trials table: one row per trial of a sweep, written as results/<name>/trials.csv.

A row holds the trial's configuration as dotted YAML keys (the columns of COLUMNS, then every other
swept key), its bookkeeping (trial_id, status, diverged_epoch, epochs_done) and every metric of its
last report. The sweep writes rows (`row`); the leaderboard, figures and report read them (`read`).
Every other module names columns through this module's constants. Columns: docs/results.md.
"""
import re
from pathlib import Path

import pandas as pd

from hero_bench import methods
from hero_bench.errors import HeroBenchError

TRIAL_ID, STATUS, DIVERGED_EPOCH, EPOCHS_DONE, ERROR = "trial_id", "status", "diverged_epoch", "epochs_done", "error"
NAME = "name"
DATA, MODEL, NOISE, NOISE_KIND = "data.name", "model.name", "data.label_noise", "data.label_noise_kind"
METHOD, RADIUS, COEF = "optimizer.name", "optimizer.radius", "optimizer.hessian_coef"
LR, EPOCHS, FACTOR, SEED = "train.lr", "train.epochs", "train.compute_factor", "train.seed"
FAMILY = "family"  # derived, never stored: see `family`
DEVICE, GPU_IDS = "device", "gpu_ids"  # where a trial trained (text, never metrics): docs/metrics.md

# Config columns every row has, in this order; other swept keys follow them.
COLUMNS = [NAME, DATA, MODEL, METHOD, RADIUS, COEF, "optimizer.adaptive", "optimizer.hvp",
           "optimizer.hessian_every", NOISE, NOISE_KIND, LR, EPOCHS, FACTOR, SEED]
GROUP_KEYS = [DATA, MODEL, NOISE, NOISE_KIND]  # results compare methods within these
REQUIRED = (TRIAL_ID, STATUS, DATA, MODEL, METHOD, RADIUS, COEF, NOISE, SEED, "val_acc", "test_acc")
# Columns added after tables were first written, with the value every older row had.
ADDED = {NOISE_KIND: "uniform", FACTOR: 1}
BOOKKEEPING = (TRIAL_ID, STATUS, DIVERGED_EPOCH)
# completed: ran every epoch; stopped: ended early by the scheduler (ASHA); diverged: NaN/inf loss;
# failed: raised (after its retries).
STATUSES = ("completed", "stopped", "diverged", "failed")
FINAL_STATUSES = ("completed", "diverged", "stopped")  # a trial in one of these is not run again
# Per-epoch bookkeeping that Ray adds or that only matters while a trial runs; not trial results.
NOT_METRICS = {
    "epoch", "lr", "epoch_time_s", ERROR, STATUS, "timestamp", "checkpoint_dir_name", "done",
    "training_iteration", TRIAL_ID, "date", "time_this_iter_s", "time_total_s", "pid", "hostname",
    "node_ip", "time_since_restore", "experiment_tag", "iterations_since_restore", "config", "should_checkpoint",
}
# A dotted YAML key: every part starts with a letter. `weight_noise_acc_0.01` is a metric, not a key.
_DOTTED_KEY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


class TrialsNotFoundError(HeroBenchError, FileNotFoundError):
    """No trials.csv where one was expected; the message names the path."""


def knobs(config):
    """(ρ, γ) of a trial's Config as its method uses them (see hero_bench.methods.Rule.knobs)."""
    return methods.METHODS.get(config.optimizer.name).knobs(config.optimizer.radius, config.optimizer.hessian_coef)


def config_family(config):
    """The method family of a trial's Config (see `family_name`)."""
    return family_name(config.optimizer.name, *knobs(config), config.train.compute_factor)


def ran(config):
    """What a trial ran, as a nested dict: its Config without the sweep section, ρ and γ resolved."""
    out = config.to_dict()
    out.pop("sweep")
    out["optimizer"]["radius"], out["optimizer"]["hessian_coef"] = knobs(config)
    return out


def row(trial_id, config, params, result=None, error=None):
    """One row: the trial's config columns (ρ and γ as its method uses them), the swept values
    `params` (dotted key -> value), its status and its last reported metrics `result`."""
    radius, coef = knobs(config)
    out = {TRIAL_ID: trial_id, NAME: config.name, DATA: config.data.name, MODEL: config.model.name,
           METHOD: config.optimizer.name, RADIUS: radius, COEF: coef, "optimizer.adaptive": config.optimizer.adaptive,
           "optimizer.hvp": config.optimizer.hvp, "optimizer.hessian_every": config.optimizer.hessian_every,
           NOISE: config.data.label_noise, NOISE_KIND: config.data.label_noise_kind, LR: config.train.lr,
           EPOCHS: config.train.epochs, FACTOR: config.train.compute_factor, SEED: config.train.seed}
    out.update({key: value for key, value in params.items() if key not in out})
    result = result or {}
    if error:
        status = "failed"
    elif result.get(STATUS) == "diverged":
        status = "diverged"
    elif result.get("epoch", 0) < config.train.total_epochs:
        status = "stopped"  # ended early by the scheduler (ASHA)
    else:
        status = "completed"
    out[STATUS] = status
    out[DIVERGED_EPOCH] = result.get(DIVERGED_EPOCH)
    out[EPOCHS_DONE] = result.get("epoch", 0) if status != "diverged" else result.get(EPOCHS_DONE)
    out.update({k: v for k, v in result.items() if k not in NOT_METRICS and k not in out and not isinstance(v, dict)})
    if error:
        out[ERROR] = str(error).strip().splitlines()[-1][:300] if str(error).strip() else "error"
    return out


def path_of(path):
    """`results/<experiment>/` or a trials.csv file -> the trials.csv path."""
    path = Path(path)
    return path / "trials.csv" if path.is_dir() else path


def read(path):
    """Read trials.csv from a results folder or a file path; fails with one line naming the path."""
    csv = path_of(path)
    if not csv.is_file():
        raise TrialsNotFoundError(f"no trials table at {csv} (run `hero-bench sweep` to create it)")
    try:
        df = pd.read_csv(csv)
    except pd.errors.EmptyDataError:
        raise HeroBenchError(f"trials table {csv} is empty") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise HeroBenchError(f"trials table {csv} lacks column(s) {', '.join(missing)}")
    return with_added_columns(df)


def with_added_columns(df):
    """`df` with every column of ADDED that it lacks, at the value older rows had."""
    return df.assign(**{column: value for column, value in ADDED.items() if column not in df})


def recorded(path):
    """trial_id -> row of the trials in the trials.csv at `path` that ended for good (failed ones
    are retried by --resume, so they are not kept)."""
    if not Path(path).exists():
        return {}
    frame = pd.read_csv(path, dtype={TRIAL_ID: str})
    return {r[TRIAL_ID]: r for r in frame.to_dict("records") if r[STATUS] in FINAL_STATUSES}


def config_columns(df):
    """Config columns: `name` and every dotted YAML key (`optimizer.radius`, any swept key)."""
    return [c for c in df.columns if c == NAME or _DOTTED_KEY.match(c)]


def is_config_key(column):
    return bool(_DOTTED_KEY.match(column))


def metric_columns(df):
    """Every numeric column that is neither config nor trial bookkeeping (trial_id, status,
    diverged_epoch); text such as a failed trial's `error` message is no metric."""
    config = set(config_columns(df))
    return [c for c in df.columns
            if c not in config and c not in BOOKKEEPING and pd.api.types.is_numeric_dtype(df[c])]


def family_name(method, radius, hessian_coef, compute_factor=1):
    """The method (optimizer.name, ρ, γ) computes (see hero_bench.methods.family), so the (ρ, γ) grid's
    edges count as sgd and sam; trained for k > 1 times the epochs (train.compute_factor) it is a
    family of its own, `{method}_{k}x`: e.g. sgd_3x, SGD given the gradient evaluations of HERO."""
    name = methods.family(method, radius, hessian_coef)
    return name if compute_factor == 1 else f"{name}_{compute_factor:g}x"


def family(row_or_df):
    """Method family (see family_name) of a trial row (-> str) or of every row of a DataFrame (-> Series)."""
    if isinstance(row_or_df, pd.DataFrame):
        df = with_added_columns(row_or_df)
        names = [family_name(*r) for r in zip(df[METHOD], df[RADIUS], df[COEF], df[FACTOR])]
        return pd.Series(names, index=df.index, name=FAMILY, dtype=object)
    return family_name(row_or_df[METHOD], row_or_df[RADIUS], row_or_df[COEF], row_or_df.get(FACTOR, 1))


def family_order(families):
    """sgd, its compute-matched variants, sam, hero, gradnorm first, then any other family alphabetically."""
    preferred = ("sgd", "sgd_2x", "sgd_3x", "sam", "hero", "gradnorm")
    known = [f for f in preferred if f in set(families)]
    return known + sorted(set(families) - set(preferred))
