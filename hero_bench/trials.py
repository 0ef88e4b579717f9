"""The trials table: one row per trial of a sweep, written as results/<name>/trials.csv.

A row holds the trial's configuration as dotted YAML keys (the columns of COLUMNS, then every other
swept key), its bookkeeping (trial_id, config_hash, status, diverged_epoch, epochs_done) and every
metric of its last report. The sweep writes rows (`row`); the leaderboard, figures, report and
`--resume` read them (`read`, `parse`), which validates every row: a damaged one (cut off, garbled,
text where a number belongs) is skipped with a warning that counts it, never half-used. Every other
module names columns through this module's constants. Columns: docs/results.md.
"""
import csv
import hashlib
import io
import json
import math
import numbers
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from hero_bench import catalog, rules
from hero_bench.errors import HeroBenchError, HeroBenchWarning

TRIAL_ID, STATUS, DIVERGED_EPOCH, EPOCHS_DONE, ERROR = "trial_id", "status", "diverged_epoch", "epochs_done", "error"
# The stage of the sweep a trial ran in: `tune` (the grid), `bracket-1`, `bracket-2`, ... (rounds that
# extend a grid past an edge; tuning too), `confirm` (a chosen configuration on the confirmation seeds).
STAGE, TUNE, CONFIRM = "stage", "tune", "confirm"
CONFIG_HASH = "config_hash"  # a configuration's identity, the same for all its seeds (text): see `config_hash`
NAME = "name"
DATA, MODEL, NOISE, NOISE_KIND = "data.name", "model.name", "data.label_noise", "data.label_noise_kind"
METHOD, RADIUS, COEF = "optimizer.name", "optimizer.radius", "optimizer.hessian_coef"
LR, EPOCHS, FACTOR, SEED = "train.lr", "train.epochs", "train.compute_factor", "train.seed"
FAMILY = "family"  # derived, never stored: see `family`
DEVICE, GPU_IDS = catalog.DEVICE.name, catalog.GPU_IDS.name  # where a trial trained (text, never metrics)

# Config columns every row has, in this order; other swept keys follow them.
COLUMNS = [NAME, DATA, MODEL, METHOD, RADIUS, COEF, "optimizer.adaptive", "optimizer.hvp",
           "optimizer.hessian_every", NOISE, NOISE_KIND, LR, EPOCHS, FACTOR, SEED]
GROUP_KEYS = [DATA, MODEL, NOISE, NOISE_KIND]  # results compare methods within these
REQUIRED = (TRIAL_ID, STATUS, DATA, MODEL, METHOD, RADIUS, COEF, NOISE, SEED, "val_acc", "test_acc")
# Columns added after tables were first written, with the value every older row had.
ADDED = {NOISE_KIND: "uniform", FACTOR: 1, STAGE: TUNE}
BOOKKEEPING = (TRIAL_ID, CONFIG_HASH, STATUS, DIVERGED_EPOCH, STAGE)
# completed: ran every epoch; stopped: ended early by the scheduler (ASHA); diverged: NaN/inf loss;
# failed: raised (after its retries).
STATUSES = ("completed", "stopped", "diverged", "failed")
FINAL_STATUSES = ("completed", "diverged", "stopped")  # a trial in one of these is not run again
# Config columns that hold numbers in every row; other config columns may hold any text.
NUMERIC_CONFIG = (RADIUS, COEF, NOISE, LR, EPOCHS, SEED)
# bookkeeping columns that hold text; of the metrics, those the catalog declares text; all others are numbers
TEXT = (TRIAL_ID, CONFIG_HASH, STATUS, ERROR, STAGE)
# Per-epoch bookkeeping that Ray adds or that only matters while a trial runs; not trial results.
NOT_METRICS = {
    "epoch", "lr", "epoch_time_s", ERROR, STATUS, "timestamp", "checkpoint_dir_name", "done",
    "training_iteration", TRIAL_ID, "date", "time_this_iter_s", "time_total_s", "pid", "hostname",
    "node_ip", "time_since_restore", "experiment_tag", "iterations_since_restore", "config", "should_checkpoint",
}
# A dotted YAML key: every part starts with a letter. `weight_noise_acc_0.01` is a metric, not a key.
_DOTTED_KEY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
# Control characters (NUL, escape, ...): hero-bench never writes one into the table, so a row with one is damaged.
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # a color code in the text of an error


class TrialsNotFoundError(HeroBenchError, FileNotFoundError):
    """No trials.csv where one was expected; the message names the path."""


class DamagedTableWarning(HeroBenchWarning):
    """Rows of a trials table were skipped as damaged; the message counts them and says where."""


def knobs(config):
    """(ρ, γ) of a trial's Config as its method uses them (see hero_bench.rules.Rule.knobs)."""
    return rules.METHODS.get(config.optimizer.name).knobs(config.optimizer.radius, config.optimizer.hessian_coef)


def config_family(config):
    """The method family of a trial's Config (see hero_bench.rules.family_name)."""
    return rules.family_name(config.optimizer.name, *knobs(config), config.train.compute_factor)


def ran(config):
    """What a trial ran, as a nested dict: its Config without the sweep section, ρ and γ resolved."""
    out = config.to_dict()
    out.pop("sweep")
    out["optimizer"]["radius"], out["optimizer"]["hessian_coef"] = knobs(config)
    return out


def config_hash(config):
    """A configuration's identity, the same for all its seeds and known while its trials run: the
    first 12 hex digits of the SHA-256 of what a trial ran (`ran`, as JSON with sorted keys) without
    its seed, the experiment's name and its tracking section. W&B runs carry it in their config so
    that seeds can be grouped; per_config.csv shows it next to its config_id."""
    what = ran(config)
    del what["name"], what["tracking"], what["train"]["seed"]
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


def config_row(config, params):
    """A row's config columns: COLUMNS from the trial's Config (ρ and γ as its method uses them),
    then every other swept key of `params` (dotted key -> value)."""
    radius, coef = knobs(config)
    out = {NAME: config.name, DATA: config.data.name, MODEL: config.model.name, METHOD: config.optimizer.name,
           RADIUS: radius, COEF: coef, "optimizer.adaptive": config.optimizer.adaptive, "optimizer.hvp": config.optimizer.hvp,
           "optimizer.hessian_every": config.optimizer.hessian_every, NOISE: config.data.label_noise,
           NOISE_KIND: config.data.label_noise_kind, LR: config.train.lr, EPOCHS: config.train.epochs,
           FACTOR: config.train.compute_factor, SEED: config.train.seed}
    out.update({key: value for key, value in params.items() if key not in out})
    return out


def row(trial_id, config, params, result=None, error=None, stage=TUNE):
    """One row: the trial's config columns (`config_row`) and `config_hash`, its stage and status and
    its last reported metrics `result` (numbers, and the text columns of TEXT: every other column of
    the table holds numbers)."""
    out = {TRIAL_ID: trial_id, CONFIG_HASH: config_hash(config), **config_row(config, params), STAGE: stage}
    result = result or {}
    status = trial_status(config, result, error)
    out[STATUS] = status
    out[DIVERGED_EPOCH] = result.get(DIVERGED_EPOCH)
    out[EPOCHS_DONE] = result.get("epoch", 0) if status != "diverged" else result.get(EPOCHS_DONE)
    out.update({k: v for k, v in result.items()
                if k not in NOT_METRICS and k not in out and (v is None or is_number(v) or is_text(k))})
    if error:
        out[ERROR] = error_line(error)
    return out


def trial_status(config, result, error=None):
    """The status (one of STATUSES) of a trial that ended with its last report `result` and `error`."""
    if error:
        return "failed"
    if result.get(STATUS) == "diverged":
        return "diverged"
    if result.get("epoch", 0) < config.train.total_epochs:
        return "stopped"  # ended early by the scheduler (ASHA)
    return "completed"
def error_line(error):
    """The line of an error's text that says what went wrong (its last: a traceback ends with the
    exception), without control characters or color codes, at most 300 characters."""
    lines = ANSI_ESCAPE.sub("", str(error)).strip().splitlines()
    line = CONTROL.sub(" ", lines[-1]).strip() if lines else "error"
    return line if len(line) <= 300 else line[:297] + "..."


def table(rows):
    """The trials table of `rows` (dicts from `row`), the same for the same rows whatever order
    trials ended in: rows by trial id, columns in the order of the first completed row (a diverged or
    failed trial reports fewer metrics, in another order), then any other column in order of
    appearance, then any REQUIRED column no row has (a table of failed trials only is still one)."""
    rows = sorted(rows, key=lambda r: str(r[TRIAL_ID]))
    first = sorted(rows, key=lambda r: r[STATUS] != "completed")
    return pd.DataFrame(rows, columns=list(dict.fromkeys([*(k for r in first for k in r), *REQUIRED])))


def is_text(column):
    """Whether a column holds text: trial bookkeeping, or a metric the catalog declares text."""
    return column in TEXT or catalog.is_text(column)


def is_number(value):
    return isinstance(value, numbers.Number) and not isinstance(value, (bool, np.bool_))


def path_of(path):
    """`results/<experiment>/` or a trials.csv file -> the trials.csv path."""
    path = Path(path)
    return path / "trials.csv" if path.is_dir() else path


def read(path):
    """The valid rows of trials.csv (a results folder or a file path), for the leaderboard and report.
    Damaged rows are skipped with one DamagedTableWarning that counts them; a table that cannot be
    read at all, or has no valid row, fails with one line naming the path."""
    frame, damaged = parse(path)
    warn_damaged(path_of(path), damaged)
    if not len(frame):
        raise HeroBenchError(f"trials table {path_of(path)} has no valid rows" + (f" ({len(damaged)} damaged)" if damaged else ""))
    return with_added_columns(frame)


def with_added_columns(df):
    """`df` with every column of ADDED that it lacks, at the value older rows had."""
    return df.assign(**{column: value for column, value in ADDED.items() if column not in df})


def parse(path):
    """(valid rows as a DataFrame, one 'line N: why' per damaged row) of trials.csv.

    hero-bench writes every row with as many fields as the header, so a row with more or fewer was
    cut off or garbled. A valid row also has a trial_id seen once, a known status, numbers in every
    numeric column, no control character in any field (hero-bench writes none: a NUL byte is
    garbage), and a completed row has its val_acc and test_acc. Fails (HeroBenchError, one
    line) only when the file as a whole cannot be read: missing, not UTF-8 text, or a header without
    the required columns."""
    csv_path = path_of(path)
    if not csv_path.is_file():
        raise TrialsNotFoundError(f"no trials table at {csv_path} (run `hero-bench sweep` to create it)")
    try:
        lines = csv_path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise HeroBenchError(f"trials table {csv_path} is not a CSV text file (it is not UTF-8)") from None
    except OSError as exc:
        raise HeroBenchError(f"cannot read trials table {csv_path}: {exc.strerror or exc}") from None
    header = fields(lines[0]) if lines else None
    if not header or header == [""]:
        raise HeroBenchError(f"trials table {csv_path} is empty")
    missing = [c for c in REQUIRED if c not in header]
    if missing or len(set(header)) != len(header):
        why = f"lacks column(s) {', '.join(missing)}" if missing else "has a column twice"
        raise HeroBenchError(f"trials table {csv_path} {why}; its header line is damaged or it is not a trials table")
    numeric = [c for c in header if c in NUMERIC_CONFIG or not (c == NAME or is_config_key(c) or is_text(c))]
    good, damaged, seen = [lines[0]], [], set()
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        problem = row_problem(fields(line), header, numeric, seen)
        if problem:
            damaged.append(f"line {number}: {problem}")
        else:
            good.append(line)
    # round_trip: every number as written (pandas before 3.0 parses some a last digit off by default,
    # and --resume rewrites the rows it keeps)
    frame = pd.read_csv(io.StringIO("\n".join(good) + "\n"), dtype={TRIAL_ID: str, CONFIG_HASH: str},
                        float_precision="round_trip")
    return frame, damaged


def fields(line):
    """A CSV line's fields, or None when it is not CSV (an open quote)."""
    try:
        return next(csv.reader([line], strict=True))
    except (csv.Error, StopIteration):
        return None


def row_problem(values, header, numeric, seen):
    """Why a row of the table is damaged, or None."""
    if values is None:
        return "not CSV"
    controls = [match.group() for match in map(CONTROL.search, values) if match]
    if controls:
        return f"control character {controls[0]!r} in a field"
    if len(values) != len(header):
        return f"{len(values)} fields where the header has {len(header)}"
    cells = dict(zip(header, values))
    trial_id, status = cells[TRIAL_ID].strip(), cells[STATUS]
    if not trial_id or trial_id in seen:
        return f"trial_id {trial_id!r} " + ("again" if trial_id else "missing")
    if status not in STATUSES:
        return f"status {status[:40]!r}"
    if not is_stage(cells.get(STAGE) or TUNE):
        return f"stage {cells[STAGE][:40]!r}"
    for column in numeric:
        value = cells[column].strip()
        if value and not number_text(value):
            return f"{column} is {value[:40]!r}, not a number"
    needed = [DATA, MODEL, METHOD, *NUMERIC_CONFIG, *(("val_acc", "test_acc") if status == "completed" else ())]
    empty = [c for c in needed if not cells[c].strip()]
    if empty:
        return f"{status} row without {', '.join(empty)}"
    seen.add(trial_id)
    return None


def is_stage(text):
    return text in (TUNE, CONFIRM) or (text.startswith("bracket-") and text[len("bracket-"):].isdigit())


def number_text(text):
    try:
        float(text)
    except ValueError:
        return False
    return "_" not in text  # float() takes 1_000; pandas would read it as text


def warn_damaged(csv_path, damaged):
    if damaged:
        shown = "; ".join(damaged[:3]) + ("; ..." if len(damaged) > 3 else "")
        warnings.warn(DamagedTableWarning(
            f"skipped {len(damaged)} damaged row(s) of {csv_path} ({shown}); `hero-bench sweep ... --resume` runs their trials again"), stacklevel=3)


def config_key(values, columns):
    """A row's identity by what its trial ran: its `columns` values, written and read back alike
    (3 and 3.0 are one number, 'True' is True, empty and NaN are None), so a row read from
    trials.csv and one made from a Config compare equal."""
    return tuple(canonical(values.get(column)) for column in columns)


def canonical(value):
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if is_number(value):
        return float(value)
    if value in ("True", "False"):
        return value == "True"
    if isinstance(value, str) and number_text(value):
        return float(value)
    return str(value)


def config_columns(df):
    """Config columns: `name` and every dotted YAML key (`optimizer.radius`, any swept key)."""
    return [c for c in df.columns if c == NAME or _DOTTED_KEY.match(c)]


def is_config_key(column):
    return bool(_DOTTED_KEY.match(column))


def metric_columns(df):
    """Every numeric column that is neither config nor trial bookkeeping (trial_id, config_hash,
    status, diverged_epoch); text such as a failed trial's `error` message is no metric."""
    config = set(config_columns(df))
    return [c for c in df.columns
            if c not in config and c not in BOOKKEEPING and pd.api.types.is_numeric_dtype(df[c])]


def tuning(df):
    """The rows of the tuning stages (the grid and its bracketing rounds): what chooses configurations."""
    return df[with_added_columns(df)[STAGE] != CONFIRM]


def confirmation(df):
    """The rows of the confirmation stage: the chosen configurations on fresh seeds."""
    return df[with_added_columns(df)[STAGE] == CONFIRM]


def family(row_or_df):
    """Method family (see hero_bench.rules.family_name) of a trial row (-> str) or of every row of a DataFrame (-> Series)."""
    if isinstance(row_or_df, pd.DataFrame):
        df = with_added_columns(row_or_df)
        names = [rules.family_name(*r) for r in zip(df[METHOD], df[RADIUS], df[COEF], df[FACTOR])]
        return pd.Series(names, index=df.index, name=FAMILY, dtype=object)
    return rules.family_name(row_or_df[METHOD], row_or_df[RADIUS], row_or_df[COEF], row_or_df.get(FACTOR, 1))


def family_order(families):
    """sgd, its compute-matched variants, sam, hero, gradnorm first, then any other family alphabetically."""
    preferred = ("sgd", "sgd_2x", "sgd_3x", "sam", "hero", "gradnorm")
    known = [f for f in preferred if f in set(families)]
    return known + sorted(set(families) - set(preferred))


# ------------------------------------------------------------------------------------ per epoch
# history.csv: one row per trial and epoch, as the trial reported it (train_acc_noisy: the accuracy
# on the epoch's batches, on the labels the trial trained on: its memorization of noisy labels).
HISTORY_COLUMNS = [TRIAL_ID, "epoch", "train_loss", "train_acc_noisy", "val_acc", "test_acc"]
HISTORY_FROM = {"train_acc_noisy": "train_acc"}  # history.csv column -> the key of the epoch's report


def history_row(trial_id, result):
    """history.csv's row of one epoch's report, or None for a report that is not an epoch's."""
    if not is_number(result.get("epoch")) or result.get(STATUS) == "diverged":
        return None
    return [trial_id, *(result.get(HISTORY_FROM.get(c, c)) for c in HISTORY_COLUMNS[1:])]


def append_history(path, rows):
    """Append rows (see history_row) to history.csv, with its header if the file is new."""
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(HISTORY_COLUMNS)
        writer.writerows(rows)


def history_table(path, trial_ids):
    """history.csv's rows of the trials `trial_ids`, one per trial and epoch (a retried or resumed
    trial's repeated epochs: the last report), ordered by trial and epoch."""
    try:
        frame = pd.read_csv(path, dtype={TRIAL_ID: str})
    except (OSError, ValueError, pd.errors.ParserError):
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    frame = frame[frame[TRIAL_ID].isin(set(trial_ids))]
    frame = frame.drop_duplicates([TRIAL_ID, "epoch"], keep="last")
    return frame.sort_values([TRIAL_ID, "epoch"], kind="stable")[HISTORY_COLUMNS]
