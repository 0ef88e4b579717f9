"""W&B tracking of a sweep: one run per trial, one summary run at the end (hero_bench.tracking makes
both), driven from Ray Tune's callbacks in the sweep driver.

Runs live under results/<name>/wandb/ (git-ignored), in `offline` mode by default so no account is
needed (`wandb sync results/<name>/wandb/wandb/offline-run-*` uploads them later). A trial keeps one
run id for its whole life: a retried trial (Ray's `sweep.max_failures`) or one continued by
`--resume` resumes its run (W&B's resume: an offline run gets one more folder with the same id, and
`wandb sync` uploads them in order) once the previous attempt's run has finished, and an epoch
already logged to the run (a retry reports again the epochs after its last checkpoint) is not logged
twice. Only hero-bench's metrics are logged: Ray's bookkeeping (`RAY_KEYS`) goes nowhere.

The W&B calls run on a thread of their own, in the order the driver's events came (`Serial`): Ray
Tune's driver handles one event at a time and a reporting trial waits for it, so a run's start (about
half a second) made in the callback itself held up the driver and every running trial. The trial
runs leave out W&B's list of installed packages, most of a run start's cost (the summary run keeps
it). Whatever the callbacks hand the thread is a copy (the trial's id, parameters, last result),
never Ray's live trial object.

Tracking never takes a sweep down. A W&B failure costs a warning and the run it happened in; only
when W&B itself cannot be reached (hero_bench.tracking.unreachable) is tracking switched off for the
rest of the sweep.
"""
import contextlib
import queue
import threading
import warnings
from pathlib import Path

from ray import tune
from ray.tune.result import AUTO_RESULT_KEYS, DEFAULT_EXPERIMENT_INFO_KEYS, DONE, SHOULD_CHECKPOINT

from hero_bench import tracking, trials
from hero_bench.sweep.space import TrialConfigs, trial_id
from hero_bench.sweep.trainable import EARLIER, reported_epochs

# What Ray adds to every result of a trial (its iteration counts, clocks, host, process, ids and flags),
# and the earlier epochs a result carries (logged one by one).
RAY_KEYS = frozenset({*AUTO_RESULT_KEYS, *DEFAULT_EXPERIMENT_INFO_KEYS, DONE, SHOULD_CHECKPOINT, EARLIER})


def callbacks(config, results_dir, configs=None):
    """The Ray Tune callbacks that tracking adds to a sweep (none when W&B is disabled)."""
    if config.tracking.wandb == "disabled":
        return []
    return [WandbTrials(config, results_dir, configs)]


def reported(result):
    """What the trial reported, without Ray's bookkeeping."""
    return {k: v for k, v in result.items() if k not in RAY_KEYS}


class Serial:
    """A daemon thread that runs the callables given to `submit`, one after another, in order;
    `wait()` returns once everything submitted so far has run. The callables handle their own errors."""

    def __init__(self, name):
        self.tasks = queue.Queue()
        self.thread = threading.Thread(target=self.loop, name=name, daemon=True)
        self.thread.start()

    def loop(self):
        while True:
            fn, args = self.tasks.get()
            try:
                fn(*args)
            finally:
                self.tasks.task_done()

    def submit(self, fn, *args):
        self.tasks.put((fn, args))

    def wait(self):
        self.tasks.join()


class WandbTrials(tune.Callback):
    """Ray Tune callback in the sweep driver: logs each trial's config, epochs and final metrics.

    `configs`: the sweep's TrialConfigs (each trial's Config, built once), shared with the trials table.
    Every W&B call goes to the thread `self.serial` (started with the first); `wait()` returns once
    all have run.
    """

    def __init__(self, config, results_dir, configs=None):
        self.name = config.name
        self.tracking = config.tracking
        self.configs = configs or TrialConfigs(config)
        self.dir = Path(results_dir) / "wandb"
        self.runs = {}  # Ray's trial id -> the open run of the trial's current attempt
        self.logged = {}  # Ray's trial id -> the last epoch logged to its run
        self.enabled = True
        self.serial = None

    def __getstate__(self):  # Ray pickles callbacks with the experiment state; live runs stay behind
        state = dict(self.__dict__)
        state["runs"], state["serial"] = {}, None
        return state

    def later(self, what, ray_id, fn, *args):
        """fn(*args), guarded, on the W&B thread, after every call handed to it before."""
        if self.serial is None:
            self.serial = Serial("hero-bench W&B")
        self.serial.submit(self.guarded, what, ray_id, fn, *args)

    def wait(self):
        """Return once every W&B call handed to the thread has run."""
        if self.serial is not None:
            self.serial.wait()

    def guarded(self, what, ray_id, fn, *args):
        """fn(*args), a W&B call for the trial with Ray's id `ray_id` (None: the summary run). A failure
        costs a warning and the trial's run; W&B unreachable, tracking for the rest of the sweep."""
        if not self.enabled:
            return
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - tracking must never stop training
            failed = f"W&B {what} failed ({type(exc).__name__}: {exc})"
            if tracking.unreachable(exc):
                self.enabled = False
                warnings.warn(f"{failed}; tracking is off for the rest of this sweep, results continue", stacklevel=2)
                return
            if ray_id is not None:
                with contextlib.suppress(Exception):  # the run may be what failed
                    self.end_attempt(ray_id)
            ends = f"the run of trial {ray_id} ends here; " if ray_id is not None else ""
            warnings.warn(f"{failed}; {ends}the other runs and results continue", stacklevel=2)

    def start_run(self, ray_id, params):
        key = trial_id(params, ray_id)  # a resumed trial goes on with its own run
        config = self.configs.get(params)
        self.runs[ray_id] = tracking.start_trial(
            config, mode=self.tracking.wandb, folder=self.dir, id=f"{self.name}-{key}",
            name=f"{trials.config_family(config)}-{key}", resume="allow", requirements=False)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.later("run start", trial.trial_id, self.start_run, trial.trial_id, dict(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.later("log", trial.trial_id, self.log, trial.trial_id, [reported(epoch) for epoch in reported_epochs(result)])

    def log(self, ray_id, epochs):
        """Log the epochs of one report (hero_bench.sweep.trainable.reported_epochs), oldest first."""
        run = self.runs.get(ray_id)
        if run is None:
            return
        for metrics in epochs:
            self.logged[ray_id] = tracking.log_epoch(run, metrics, self.logged.get(ray_id, 0))

    def end_attempt(self, ray_id):
        """The run of an attempt that failed (Ray retries the trial from its last checkpoint, and the
        retry resumes the run) or whose W&B call failed: finished with exit code 1, and forgotten."""
        run = self.runs.pop(ray_id, None)
        if run is not None:
            run.finish(exit_code=1)

    def end_run(self, ray_id, params, result, error):
        run = self.runs.pop(ray_id, None)
        self.logged.pop(ray_id, None)
        if run is not None:
            tracking.finish_trial(run, self.configs.get(params), result, error)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.later("run finish", trial.trial_id, self.end_attempt, trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended(trial, "error")

    def ended(self, trial, error):
        self.later("run finish", trial.trial_id, self.end_run, trial.trial_id, dict(trial.config),
                   reported(trial.last_result), error)

    def on_experiment_end(self, trials, **info):
        self.wait()

    def where(self):
        """How to see the sweep's W&B runs, in one line."""
        if self.tracking.wandb == "offline":
            return (f"W&B: offline runs in {self.dir / 'wandb'}; upload them with `wandb login`, then "
                    f"`wandb sync {self.dir / 'wandb'}/offline-run-*`")
        return f"W&B: runs in project {self.tracking.project}, group {self.name}"

    def finish_sweep(self, results_dir):
        """The summary run (hero_bench.tracking.log_summary), once the trials' W&B calls have run."""
        self.wait()
        self.guarded("summary run", None, tracking.log_summary, self.tracking, self.name, Path(results_dir))
