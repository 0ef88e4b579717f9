"""What a sweep prints while it runs.

By default: a short header (the experiment, how many trials, how many at a time, where the results
go), then progress. On a terminal that is one bar updated in place (done, running and failed of the
total, elapsed time, ETA); anywhere else (a pipe, a log file) one plain line per finished trial, with
its swept values, status and accuracies. Ray's own tables, its per-trial log lines and its notices
stay quiet; its warnings still show. A trial that fails, or fails and is tried again, is one line
(the trial, its error's last line, what happens next) whatever the output; its whole traceback goes
to errors.log in the results folder (`ErrorLog`), which the line names, instead of the console. At
the end, one line per configuration whose trials failed (`failures`). Nothing printed holds terminal
escape codes unless stdout is a terminal. `--verbose` gives Ray's output back as Ray prints it,
tracebacks included.
"""
import contextlib
import logging
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path

import ray
from ray import tune
from tqdm.auto import tqdm

from hero_bench.atomic import append
from hero_bench.errors import ConfigError, HeroBenchWarning
from hero_bench.sweep.space import CONTINUES, trial_params
from hero_bench.trials import ANSI_ESCAPE, ERROR, SEED, STATUS, config_columns, error_line

# Loggers whose INFO lines a sweep's user does not need: Ray's (a notice at start, a line per
# checkpoint) and Optuna's (a line per study and per configuration told, which the progress lines show).
CHATTER = ("ray", "ray.tune", "ray.train", "ray._private", "optuna")
# The notice that a Ray started by hero-bench itself uses token authentication: about Ray's setup,
# not the sweep; `ray start` prints it to those who run a cluster themselves.
RAY_NOTICES = ("ray._private.authentication",)
# Ray's switches for its output: the "(trainable pid=...)" prefix without colors, Ray Tune's classic
# reporter, which verbose=0 silences (the newer one prints its header at any verbosity), and no
# traceback of each failed trial (its own line says what failed; errors.log has the traceback).
RAY_QUIET_ENV = {"RAY_COLOR_PREFIX": "0", "RAY_AIR_NEW_OUTPUT": "0", "TUNE_PRINT_ALL_TRIAL_ERRORS": "0"}
ERRORS = "errors.log"  # in the results folder: every failed trial's traceback
FAILURE_HEADER = re.compile(r"^Failure # \d+ \(occurred at [^)\n]*\)$", re.MULTILINE)  # Ray Tune's, in error.txt


@contextlib.contextmanager
def ray_quiet(verbose):
    """Ray's driver-side output as --verbose asks: silent but for warnings, and the "(trainable
    pid=...)" prefix of the trials' log lines without escape codes when stdout is not a terminal."""
    if verbose:
        yield
        return
    levels = {**dict.fromkeys(CHATTER, logging.WARNING), **dict.fromkeys(RAY_NOTICES, logging.ERROR)}
    env = {k: v for k, v in RAY_QUIET_ENV.items() if k != "RAY_COLOR_PREFIX" or not sys.stdout.isatty()}
    saved = {name: logging.getLogger(name).level for name in levels}, {k: os.environ.get(k) for k in env}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    os.environ.update(env)
    try:
        yield
    finally:
        for name, level in saved[0].items():
            logging.getLogger(name).setLevel(level)
        for key, value in saved[1].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def quiet_trial(verbose):
    """In a trial's worker, unless --verbose: Ray's INFO lines (one per checkpoint) off, and no
    "Exception ignored in ..." traceback when Ray stops the worker at the end of the sweep."""
    if not verbose:
        for name in CHATTER:
            logging.getLogger(name).setLevel(logging.WARNING)
        sys.unraisablehook = ignore_exit


def ignore_exit(unraisable):
    """Ray stops an idle worker with SIGTERM, whose handler raises SystemExit in whatever code runs at
    that moment; in a weakref or __del__ callback Python cannot raise it and prints it as an ignored
    exception. That one says nothing about the sweep; every other goes to Python's own hook."""
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, SystemExit):
        return
    sys.__unraisablehook__(unraisable)


def concurrency(resources, max_concurrent):
    """How many trials can run at once on the Ray cluster (its CPUs and GPUs over a trial's)."""
    total = ray.cluster_resources()
    fits = [math.floor(total.get(kind.upper(), 0) / wanted + 1e-9) for kind, wanted in vars(resources).items() if wanted]
    at_once = max(1, min(fits)) if fits else 1
    return min(at_once, max_concurrent) if max_concurrent else at_once


def header(config, total, resumed, at_once, results_dir, storage):
    total_cpus = ray.cluster_resources().get("CPU", 0)
    gpus = ray.cluster_resources().get("GPU", 0)
    seeds = len(config.sweep.seeds)
    trials = f"{total} trials" + (f" ({total // seeds} configurations x {seeds} seeds)" if total % seeds == 0 else "")
    return (f"hero-bench sweep {config.name}: {trials}" + (f", {resumed} already finished" if resumed else "")
            + f"; {at_once} at a time on {total_cpus:g} CPUs, {gpus:g} GPUs\n"
            + f"results: {results_dir} (trials.csv grows as trials end); Ray storage: {storage}")


def error_text(trial):
    """The text Ray wrote of a trial's latest failure (error.txt, in the driver's folder of the trial,
    where each failure is appended under a `Failure # n (occurred at ...)` line; never its pickled
    error), or "error" when there is none."""
    path = trial.error_file
    if not (path and Path(path).is_file()):
        return "error"
    return FAILURE_HEADER.split(Path(path).read_text(errors="replace"))[-1].strip() or "error"


def stage_header(name, points, config):
    """`stage confirm: 120 trials (12 configurations x 10 seeds)`, as a stage after the grid starts."""
    seeds = len(config.sweep.confirm_seeds if name == "confirm" else config.sweep.seeds)
    if not points:
        return f"stage {name}: no trials (no choice sits at an end of its grid that can be extended)"
    return f"stage {name}: {len(points)} trials ({len(points) // seeds} configurations x {seeds} seeds)"


def swept(trial):
    """`optimizer.radius=0.5 ... train.seed=1`: a trial's swept values, its seed last."""
    values = {k: f"{v:.6g}" if isinstance(v, float) else v  # a drawn float in short
              for k, v in trial_params(trial.config).items() if k != CONTINUES}
    return " ".join(f"{k}={v}" for k, v in values.items() if k != SEED) + f" {SEED}={values.get(SEED)}"


class ErrorLog(tune.Callback):
    """Ray Tune callback in the sweep driver: appends each failure of a trial (retried or final), with
    its traceback, to the results folder's errors.log."""

    def __init__(self, results_dir):
        self.path = Path(results_dir) / ERRORS

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.add(trial, "tried again from its last checkpoint")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.add(trial, "failed")

    def add(self, trial, outcome):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        text = ANSI_ESCAPE.sub("", error_text(trial)).rstrip()
        try:
            append(self.path, f"--- {stamp} trial {trial.trial_id} ({swept(trial)}): {outcome}\n{text}\n\n")
        except ConfigError as exc:  # raised into Ray it would stop the sweep; the error is in trials.csv too
            warnings.warn(HeroBenchWarning(f"{exc}; this traceback is not kept"), stacklevel=2)


class Progress(tune.Callback):
    """Ray Tune callback in the sweep driver: counts the trials and shows how far the sweep is.
    `errors`: the errors.log that each failure's line points to; `retries`: sweep.max_failures."""

    errors, retries = ERRORS, 0  # what one pickled in Ray's state before they existed goes on with

    def __init__(self, total, done, metric, errors=ERRORS, retries=0, stream=None):
        self.stream = stream or sys.stdout
        self.total, self.done, self.failed, self.metric = total, done, 0, metric
        self.errors, self.retries = errors, retries
        self.running = set()
        self.started = time.monotonic()
        self.bar = tqdm(total=total, initial=done, file=self.stream, unit="trial", dynamic_ncols=True) \
            if self.stream.isatty() else None

    def __getstate__(self):  # Ray pickles callbacks with its experiment state; the bar stays behind
        return {**self.__dict__, "bar": None, "stream": None}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self.show()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finished(trial, trial.last_result.get("status", "completed"))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed += 1
        self.finished(trial, "failed", f": {error_line(error_text(trial))}; traceback in {self.errors}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        left = "" if self.retries < 0 else f" of {self.retries}"
        self.say(f"{self.prefix('retrying')} {swept(trial)}: {error_line(error_text(trial))}; tried again from its last "
                 f"checkpoint (retry {trial.run_metadata.num_failures}{left}); traceback in {self.errors}")

    def finished(self, trial, status, why=""):
        self.running.discard(trial.trial_id)
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            self.show()
            if not why:
                return
        self.say(self.line(trial, status) + why)

    def say(self, line):
        """One line above the bar on a terminal, else on its own."""
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def line(self, trial, status):
        """`[ 12/96, 0:01:40, ETA 0:12:13] completed  optimizer.radius=0.5 ... train.seed=1  val 96.9 test 95.8`"""
        result = trial.last_result or {}
        scores = " ".join(f"{name} {result[key]:.2f}" for key, name in (("val_acc", "val"), ("test_acc", "test"))
                          if isinstance(result.get(key), (int, float)))
        return f"{self.prefix(status)} {swept(trial)}  {scores}".rstrip()

    def prefix(self, status):
        """`[ 12/96, 0:01:40, ETA 0:12:13] completed`"""
        return f"[{self.done:>{len(str(self.total))}}/{self.total}, {self.clock()}] {status:<9}"

    def clock(self):
        elapsed = time.monotonic() - self.started
        fresh = self.done - (self.bar.initial if self.bar is not None else 0)
        eta = elapsed / max(fresh, 1) * (self.total - self.done)
        return f"{_hms(elapsed)}, ETA {_hms(eta)}" if self.done < self.total else _hms(elapsed)

    def show(self):
        if self.bar is not None:
            self.bar.set_postfix_str(f"running {len(self.running)}, failed {self.failed}")

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _hms(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def failures(frame, errors):
    """One line per configuration whose trials failed, with the last line of their error (a failure
    with another error is another line), then where the tracebacks are and how to run them again."""
    failed = frame[frame[STATUS] == "failed"]
    if failed.empty:
        return []
    varying = [c for c in config_columns(frame) if c != SEED and frame[c].nunique(dropna=False) > 1]
    settings = [" ".join(f"{c}={row[c]}" for c in varying) or "every configuration" for _, row in failed.iterrows()]
    lines = []
    for (setting, error), rows in failed.groupby([settings, failed[ERROR].fillna("error")], sort=True):
        seeds = ", ".join(str(seed) for seed in sorted(rows[SEED]))
        lines.append(f"failed: {setting} ({len(rows)} trial{'s' if len(rows) > 1 else ''}, {SEED} {seeds}): {error}")
    return lines + [f"tracebacks: {errors}; the same command with --resume runs the failed trials again"]
