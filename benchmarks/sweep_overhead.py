"""Per-trial overhead of a Ray Tune sweep, and the throughput of 2 concurrent trials on 2 cores.

N identical short trials (digits + mlp, SGD, 1 thread each) are run
  (a) back to back in this process with run_trial,
  (b) through sweep.run with one trial at a time,
  (c) through sweep.run with two trials at a time,
  (d) as (c) with W&B offline tracking on.
Ray is started once before (b); its start-up time is printed separately.
Overhead per trial = (b - a) / N. Throughput ratio = a / c.
To show where the overhead goes, each sweep's start-up (from the call to the first trial's start:
the trial actor's process, its imports) and its trials' mean duration (start to completion, as the
driver sees them) are printed next to the in-process trials' mean duration. A process's or actor's
first trial also pays one-off imports (torch._dynamo, on the first optimizer it builds).

    python benchmarks/sweep_overhead.py --trials 8 --epochs 200
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import ray
from ray import tune

from hero_bench import config as config_module
from hero_bench import sweep
from hero_bench.sweep import tracking
from hero_bench.train import run_trial


def experiment(trials, epochs, concurrent, wandb):
    return config_module.from_dict({
        "name": f"overhead_{concurrent}_{wandb}",
        "data": {"name": "digits"},
        "model": {"name": "mlp"},
        "train": {"epochs": epochs, "threads": 1},
        "optimizer": {"name": "sgd"},
        "evaluate": {"ptq_bits": [], "hessian": {"top_eigenvalue": False, "trace": False}, "weight_noise": {"sigmas": []}},
        # identical trials: a constant lr listed N times is a grid axis of N points
        "sweep": {"space": {"train.lr": [0.05] * trials}, "seeds": [0], "max_concurrent_trials": concurrent,
                  "checkpoint_every": epochs},
        "tracking": {"wandb": wandb},
    })


class Clock(tune.Callback):
    """When each trial starts and completes, as the sweep driver sees it."""

    def __init__(self):
        self.starts, self.ends = {}, {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.starts[trial.trial_id] = time.perf_counter()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ends[trial.trial_id] = time.perf_counter()


def timed_sweep(config, root):
    """(wall s, start-up s, mean trial s) of one sweep."""
    clock = Clock()
    started = time.perf_counter()
    frame = sweep.run(config, results_root=root / "results", storage=str(root / "ray"),
                      callbacks=[clock, *tracking.callbacks(config, root / "results" / config.name)])
    wall = time.perf_counter() - started
    assert (frame["status"] == "completed").all(), frame["status"].tolist()
    durations = [clock.ends[t] - clock.starts[t] for t in clock.ends]
    return wall, min(clock.starts.values()) - started, sum(durations) / len(durations)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=200)
    args = parser.parse_args()
    n = args.trials
    os.environ.setdefault("WANDB_SILENT", "true")

    trial_times = []
    for _ in range(n):
        started = time.perf_counter()
        run_trial(experiment(n, args.epochs, 1, "disabled"))
        trial_times.append(time.perf_counter() - started)
    in_process = sum(trial_times)

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        started = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
        ray_start = time.perf_counter() - started
        try:
            one, one_startup, one_trial = timed_sweep(experiment(n, args.epochs, 1, "disabled"), root)
            two, two_startup, two_trial = timed_sweep(experiment(n, args.epochs, 2, "disabled"), root)
            two_wandb, wandb_startup, wandb_trial = timed_sweep(experiment(n, args.epochs, 2, "offline"), root)
        finally:
            ray.shutdown()

    print(f"{n} trials, digits + mlp, SGD, {args.epochs} epochs, 1 thread per trial, {os.cpu_count()} cores")
    print(f"{'run':<36}{'wall s':>8}{'s/trial':>9}{'start-up s':>12}{'mean trial s':>14}")
    rows = [("back to back in one process", in_process, 0.0, in_process / n),
            ("sweep, 1 concurrent", one, one_startup, one_trial),
            ("sweep, 2 concurrent", two, two_startup, two_trial),
            ("sweep, 2 concurrent, W&B offline", two_wandb, wandb_startup, wandb_trial)]
    for label, seconds, startup, trial in rows:
        print(f"{label:<36}{seconds:>8.1f}{seconds / n:>9.2f}{startup:>12.1f}{trial:>14.2f}")
    print(f"Ray start-up (once per sweep): {ray_start:.1f} s")
    print(f"overhead per trial (1 concurrent vs in-process): {(one - in_process) / n:.2f} s")
    print(f"throughput ratio, 2 concurrent vs in-process: {in_process / two:.2f}x")
    print(f"W&B offline cost per trial (2 concurrent): {(two_wandb - two) / n:.2f} s")


if __name__ == "__main__":
    main()
