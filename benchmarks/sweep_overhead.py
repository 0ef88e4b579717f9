"""Per-trial overhead of a Ray Tune sweep, and the throughput of 2 concurrent trials on 2 cores.

N identical short trials (digits + mlp, SGD, 1 thread each) are run
  (a) back to back in this process with run_trial,
  (b) through sweep.run with one trial at a time,
  (c) through sweep.run with two trials at a time,
  (d) as (c) with W&B offline tracking on.
Ray is started once before (b); its start-up time is printed separately.
Overhead per trial = (b - a) / N. Throughput ratio = a / c.

    python benchmarks/sweep_overhead.py --trials 8 --epochs 10
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import ray

from hero_bench import config as config_module
from hero_bench import sweep, tracking
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


def timed_sweep(config, root):
    started = time.perf_counter()
    frame = sweep.run(config, results_root=root / "results", storage=str(root / "ray"),
                      callbacks=tracking.callbacks(config, root / "results" / config.name))
    assert (frame["status"] == "completed").all(), frame["status"].tolist()
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    n = args.trials
    os.environ.setdefault("WANDB_SILENT", "true")

    started = time.perf_counter()
    for _ in range(n):
        run_trial(experiment(n, args.epochs, 1, "disabled"))
    in_process = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        started = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
        ray_start = time.perf_counter() - started
        try:
            one = timed_sweep(experiment(n, args.epochs, 1, "disabled"), root)
            two = timed_sweep(experiment(n, args.epochs, 2, "disabled"), root)
            two_wandb = timed_sweep(experiment(n, args.epochs, 2, "offline"), root)
        finally:
            ray.shutdown()

    print(f"{n} trials, digits + mlp, SGD, {args.epochs} epochs, 1 thread per trial, {os.cpu_count()} cores")
    print(f"{'run':<42}{'wall s':>9}{'s/trial':>10}")
    for label, seconds in [("back to back in one process", in_process), ("sweep, 1 concurrent", one),
                           ("sweep, 2 concurrent", two), ("sweep, 2 concurrent, W&B offline", two_wandb)]:
        print(f"{label:<42}{seconds:>9.1f}{seconds / n:>10.2f}")
    print(f"Ray start-up (once per sweep): {ray_start:.1f} s")
    print(f"overhead per trial (1 concurrent vs in-process): {(one - in_process) / n:.2f} s")
    print(f"throughput ratio, 2 concurrent vs in-process: {in_process / two:.2f}x")
    print(f"W&B offline cost per trial (2 concurrent): {(two_wandb - two) / n:.2f} s")


if __name__ == "__main__":
    main()
