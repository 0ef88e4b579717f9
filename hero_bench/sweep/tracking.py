"""W&B tracking of a sweep: one run per trial, one summary run at the end.

The trials' W&B calls run on a thread of their own (hero_bench.sweep.background), in order, so that a
slow W&B call never holds up the sweep driver and, through it, the trials waiting on their reports.

Runs live under results/<name>/wandb/ (git-ignored), in `offline` mode by default so no account is
needed (`wandb sync results/<name>/wandb/wandb/offline-run-*` uploads them later). Tracking never
takes a sweep down: any W&B failure becomes one warning and tracking is switched off for the rest of
the sweep. The API key is read by wandb from the environment or its netrc; hero-bench never reads or
writes it.
"""
import warnings
from pathlib import Path

from ray import tune

from hero_bench import trials
from hero_bench.sweep.background import Serial
from hero_bench.sweep.space import TrialConfigs, trial_id

INIT_TIMEOUT_S = 30  # online mode without network must not stall a trial for wandb's default 90 s


def callbacks(config, results_dir, configs=None):
    """The Ray Tune callbacks that tracking adds to a sweep (none when W&B is disabled)."""
    if config.tracking.wandb == "disabled":
        return []
    return [WandbTrials(config, results_dir, configs)]


def numeric(metrics):
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class WandbTrials(tune.Callback):
    """Ray Tune callback in the sweep driver: logs each trial's config, epochs and final metrics.

    `configs`: the sweep's TrialConfigs (each trial's Config, built once), shared with the trials table.
    """

    def __init__(self, config, results_dir, configs=None):
        self.name = config.name
        self.tracking = config.tracking
        self.configs = configs or TrialConfigs(config)
        self.dir = Path(results_dir) / "wandb"
        self.runs = {}
        self.enabled = True
        self.background = None  # the thread of the W&B calls, started with the first

    def __getstate__(self):  # Ray pickles callbacks with the experiment state; live runs stay behind
        state = dict(self.__dict__)
        state["runs"], state["background"] = {}, None
        return state

    def later(self, what, fn, *args):
        """`fn(*args)`, guarded, on the W&B thread after every call handed to it before."""
        if self.background is None:
            self.background = Serial("hero-bench W&B")
        self.background.submit(self.guarded, what, fn, *args)

    def wait(self):
        """Return once every W&B call handed to the thread has run."""
        if self.background is not None:
            self.background.wait()

    def guarded(self, what, fn, *args, **kwargs):
        if not self.enabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking must never stop training
            self.enabled = False
            warnings.warn(f"W&B {what} failed ({type(exc).__name__}: {exc}); tracking is off for the rest of this sweep, results continue", stacklevel=2)
            return None

    def init(self, requirements=True, **kwargs):
        """A W&B run; `requirements`: with the list of Python packages of the driver's environment
        (taking that list was most of the time and CPU a run's start cost)."""
        import wandb

        self.dir.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(init_timeout=INIT_TIMEOUT_S, silent=True, x_save_requirements=requirements)
        return wandb.init(
            project=self.tracking.project, entity=self.tracking.entity, group=self.name, dir=str(self.dir),
            mode=self.tracking.wandb, reinit="create_new", settings=settings, **kwargs,
        )

    def start_run(self, ray_id, params):
        # W&B config stays nested ({"optimizer": {"radius": ...}}), so report panels can address
        # config:optimizer.radius.
        config = self.configs.get(params)
        family = trials.config_family(config)
        key = trial_id(params, ray_id)  # a resumed trial goes on with its own run
        # the driver's packages are the summary run's; every trial's run would list the same
        self.runs[ray_id] = self.init(
            requirements=False, id=f"{self.name}-{key}", name=f"{family}-{key}", job_type=family, tags=[family],
            config=trials.ran(config), resume="allow",
        )

    def on_trial_start(self, iteration, trials, trial, **info):
        self.later("run start", self.start_run, trial.trial_id, trial.config)

    def log(self, ray_id, metrics, step):
        run = self.runs.get(ray_id)
        if run is not None:
            run.log(metrics, step=step)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        self.later("log", self.log, trial.trial_id, numeric(result), step)

    def end_run(self, ray_id, last_result, status):
        run = self.runs.pop(ray_id, None)
        if run is None:
            return
        run.summary.update(numeric(last_result))
        run.summary["status"] = last_result.get("status", status)
        run.finish(exit_code=0 if status == "completed" else 1)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.later("run finish", self.end_run, trial.trial_id, dict(trial.last_result), "completed")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.later("run finish", self.end_run, trial.trial_id, dict(trial.last_result), "failed")

    def on_experiment_end(self, trials, **info):
        self.wait()

    def where(self):
        """How to see the sweep's W&B runs, in one line."""
        if self.tracking.wandb == "offline":
            return (f"W&B: offline runs in {self.dir / 'wandb'}; upload them with `wandb login`, then "
                    f"`wandb sync {self.dir / 'wandb'}/offline-run-*`")
        return f"W&B: runs in project {self.tracking.project}, group {self.name}"

    def finish_sweep(self, results_dir):
        """One summary run, the leaderboard as a wandb.Table and the figures as images, handed to the
        W&B thread after the trials' runs: the caller may go on, and `wait()` for it before exiting."""
        self.later("summary run", self.log_summary, Path(results_dir))

    def log_summary(self, results_dir):
        import pandas as pd
        import wandb

        run = self.init(id=f"{self.name}-summary", name=f"{self.name}-summary", job_type="summary", resume="allow")
        board = results_dir / "leaderboard.csv"
        if board.exists():
            run.log({"leaderboard": wandb.Table(dataframe=pd.read_csv(board))})
        images = {f"figures/{p.stem}": wandb.Image(str(p)) for p in sorted((results_dir / "figures").glob("*.png"))}
        if images:
            run.log(images)
        run.finish()
