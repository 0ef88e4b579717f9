"""How busy a sweep keeps the machine, and where its wall time goes.

    python benchmarks/sweep_efficiency.py EXPERIMENT [--set key=value ...] [--where key=value ...]
                                          [--points K] [--seeds S] [--rounds 3] [--sweep-only]

The trials of EXPERIMENT (its file with the `--set` overrides; `--where` keeps the grid points with
that value, `--points` K of them evenly spaced, `--seeds` the first S seeds) are run, round after
round, (a) back to back in this process with run_trial, as `hero-bench train` runs one, and (b) as
`hero-bench sweep` (the command's own code, run in this process: Ray start, the Tuner, trials.csv,
the leaderboards and figures, W&B as the file sets it, Ray shutdown) into a temporary folder.

Efficiency = Σ trials' cpu_time_s / (wall time x CPUs given to trials), for the command and for
its sweep (hero_bench.sweep.run, Ray start included, as "sweep finished in" counts it); throughput
ratio = in-process wall / command wall (2 cores at best give 2x). The load average is printed
beside every figure: other jobs on the machine slow the trials and lower the efficiency.

Where the wall time went, in worker-seconds (each worker process is one slot of the sweep: the
command's wall time times the workers): the trials' CPU time (the useful part); what each trial
spends beyond it (set-up: config, checkpoint, data, model, optimizer; its report round
trips to the driver; checkpoint snapshots and saves; the rest, mostly CPU taken by other processes);
the time between one trial's end and the next one's start on the same worker; before a worker's
first trial (Ray start, the worker's process and imports) and after its last (waiting for the other
workers' last trials, then the end-of-sweep outputs). Also the sweep driver's own work: each Ray
Tune callback's time (W&B, the trials table, Ray's loggers, the progress lines), Ray's experiment-
state snapshots, and the CPU time of the driver and of Ray's own processes.

The trial workers are timed from inside: the trainable the sweep runs is wrapped (this script's
`profiled`, shipped to the workers by value) and a few functions of hero_bench and Ray are timed
in each worker process and in the driver. Only timers are added; what the trials compute is not
touched.
"""
import argparse
import collections
import functools
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from hero_bench import config as config_module
from hero_bench import experiment_files
from hero_bench.sweep import space as sweep_space
from hero_bench.train import run_trial
from hero_bench.trials import SEED


class Timer:
    """Seconds and calls per label of the functions it wraps."""

    def __init__(self):
        self.seconds, self.calls = collections.Counter(), collections.Counter()

    def wrap(self, label, fn, after=None):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - started
                self.calls[label] += 1
                if after:
                    after()
        return timed

    def patch(self, owner, name, label, after=None):
        setattr(owner, name, self.wrap(label, getattr(owner, name), after))

    def snapshot(self):
        return dict(self.seconds), dict(self.calls)


# ---------------------------------------------------------------------------------- in the workers

def worker_timer():
    """This worker process's Timer, its functions patched on the first call."""
    import ray.train._internal.storage as storage
    from ray import tune

    from hero_bench import data, methods, models, train

    probe = getattr(train, "_sweep_efficiency_probe", None)
    if probe is None:
        probe = train._sweep_efficiency_probe = Timer()
        probe.marks = {}
        probe.patch(data, "load", "data")
        probe.patch(models, "create", "model")
        probe.patch(methods, "create", "optimizer")
        probe.patch(train, "build", "build", after=lambda: probe.marks.setdefault("built", time.time()))
        probe.patch(train, "checkpoint_state", "snapshot")
        probe.patch(train, "final_metrics", "evaluation")
        probe.patch(tune, "report", "tune.report")
        probe.patch(storage.StorageContext, "persist_current_checkpoint", "persist")
    return probe


def instrumented(trainable, folder):
    """`trainable` (hero_bench's Ray Tune function) timed from inside its worker: one JSON file per
    trial in `folder` (this machine's; the sweep runs locally)."""

    def profiled(params, **kwargs):
        from ray import tune

        from hero_bench.sweep import trainable as module

        entered = time.time()
        probe = worker_timer()
        probe.marks = {}
        before = probe.snapshot()
        run_trial_fn = module.run_trial
        reports = []

        def run_trial_timed(config, report=None, **rest):
            def timed_report(metrics, state):
                started = time.perf_counter()
                report(metrics, state)
                reports.append((metrics.get("epoch_time_s", 0.0), time.perf_counter() - started))

            return run_trial_fn(config, report=timed_report if report else None, **rest)

        module.run_trial = run_trial_timed
        try:
            trainable(params, **kwargs)
        finally:
            module.run_trial = run_trial_fn
            seconds, calls = probe.snapshot()
            record = {
                "trial": tune.get_context().get_trial_id(), "pid": os.getpid(),
                "process_start": psutil.Process().create_time(), "entered": entered, "exited": time.time(),
                "built": probe.marks.get("built", entered),
                "seconds": {k: v - before[0].get(k, 0.0) for k, v in seconds.items()},
                "calls": {k: v - before[1].get(k, 0) for k, v in calls.items()},
                "epochs_s": sum(epoch for epoch, _ in reports), "reports": len(reports),
                "report_callback_s": sum(s for _, s in reports),
            }
            (Path(folder) / f"{record['trial']}-{os.getpid()}-{entered:.6f}.json").write_text(json.dumps(record))

    profiled.__signature__, profiled.__name__ = inspect.signature(trainable), trainable.__name__  # Ray names trials by it
    return profiled


# ---------------------------------------------------------------------------------- in the driver

TRIAL_EVENTS = ("on_trial_start", "on_trial_result", "on_trial_complete", "on_trial_error")
HOOKS = (*TRIAL_EVENTS, "on_step_begin", "on_step_end", "on_checkpoint", "on_trial_save", "on_experiment_end")


@functools.lru_cache(maxsize=None)
def driver_probe():
    """The driver's Timer, with Ray Tune's callback calls timed per callback class and hook, Ray's
    experiment-state snapshots, Ray start, the sweep, the Tuner and the end-of-sweep steps."""
    import ray
    from ray.tune.callback import CallbackList
    from ray.tune.execution.tune_controller import TuneController

    from hero_bench import sweep
    from hero_bench.results import outputs
    from hero_bench.sweep import cluster, runner, tracking

    probe = Timer()
    probe.marks = {}

    def sample_cpu():  # CPU seconds of Ray's processes and the trial workers so far, by pid (they exit before the end)
        cpu = probe.marks.setdefault("ray_cpu", {})
        for pid, (seconds, name) in ray_processes_cpu().items():
            cpu[pid] = (max(seconds, cpu.get(pid, (0.0,))[0]), name)

    def each(hook):
        def call_all(self, **info):
            if hook == "on_trial_complete":
                sample_cpu()
            for callback in self._callbacks:
                started = time.perf_counter()
                getattr(callback, hook)(**info)
                probe.seconds[f"{type(callback).__name__}.{hook}"] += time.perf_counter() - started
                probe.calls[f"{type(callback).__name__}.{hook}"] += 1
        return call_all

    for hook in HOOKS:
        setattr(CallbackList, hook, each(hook))
    probe.patch(TuneController, "save_to_dir", "Ray experiment-state snapshots")
    probe.patch(cluster, "init", "Ray start")
    probe.patch(sweep, "run", "sweep (hero_bench.sweep.run)")
    probe.patch(runner.tune.Tuner, "fit", "Tuner.fit", after=lambda: probe.marks.__setitem__("fit_end", time.time()))
    probe.patch(outputs, "write", "outputs: tables and figures")
    probe.patch(outputs, "summary", "outputs: summary lines")
    probe.patch(tracking.WandbTrials, "finish_sweep", "W&B summary run")
    if hasattr(tracking.WandbTrials, "wait"):  # W&B's calls on a thread of their own
        probe.patch(tracking.WandbTrials, "wait", "waiting for W&B's thread")
    probe.patch(ray, "shutdown", "Ray shutdown")
    original = outputs.write

    def write(*args, **kwargs):  # Ray is still up
        sample_cpu()
        return original(*args, **kwargs)

    outputs.write = write
    return probe


def ray_processes_cpu():
    """(CPU seconds, short name) of this process's children (Ray's GCS, raylet, agents and its
    workers), by pid."""
    cpu = {}
    for child in psutil.Process().children(recursive=True):
        try:
            times, command = child.cpu_times(), child.cmdline()
        except psutil.Error:
            continue
        scripts = [Path(part).name for part in command if part.endswith((".py", "gcs_server", "raylet"))]
        cpu[child.pid] = (times.user + times.system, (scripts or [child.name()])[-1])
    return cpu


# ---------------------------------------------------------------------------------- the trials

def chosen(config, where, points, seeds):
    """(the grid points, the seeds) of the sample: points with the `where` values, `points` of them
    evenly spaced, and the first `seeds` seeds."""
    params = sweep_space.grid_params(sweep_space.search_space(config))
    if params is None:
        sys.exit("sweep_efficiency: the experiment draws its trials at random; give it a grid")
    grid = []
    for p in params:
        point = {k: v for k, v in sweep_space.trial_params(p).items() if k != SEED}
        if point not in grid and all(str(point.get(k)) == v for k, v in where.items()):
            grid.append(point)
    if not grid:
        sys.exit(f"sweep_efficiency: no grid point has {where}")
    if points and points < len(grid):
        grid = [grid[round(i * (len(grid) - 1) / max(points - 1, 1))] for i in range(points)]
    return grid, config.sweep.seeds[:seeds] if seeds else config.sweep.seeds


def sample_file(config, grid, seeds, path):
    """The experiment with the sample as its sweep: a union of one-point grids, on `seeds`, and only
    them (no bracketing or confirmation stage after them)."""
    raw = config.to_dict()
    raw["sweep"]["space"] = [{k: [v] for k, v in point.items()} for point in grid]
    raw["sweep"]["seeds"] = list(seeds)
    raw["sweep"]["bracket"], raw["sweep"]["confirm_seeds"] = 0, []
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def in_process(config, grid, seeds):
    """(wall s, Σ cpu_time_s) of the sample's trials back to back in this process."""
    started, cpu = time.perf_counter(), 0.0
    for point in grid:
        for seed in seeds:
            cpu += run_trial(config_module.for_trial(config, {**point, SEED: seed}))["cpu_time_s"]
    return time.perf_counter() - started, cpu


def swept(file, folder, at_once):
    """One `hero-bench sweep` of `file` into `folder`, timed: a dict of what it measured."""
    import pandas as pd
    from hero_bench import cli
    from hero_bench.sweep import runner

    probe = driver_probe()
    profiles = folder / "profiles"
    profiles.mkdir()
    probe.seconds.clear(), probe.calls.clear(), probe.marks.clear()
    trainable = runner.trainable
    runner.trainable = instrumented(trainable, profiles)
    started, cpu_started = time.time(), time.process_time()
    try:
        code = cli.main(["sweep", str(file), "--results", str(folder / "results"), "--storage", str(folder / "ray")])
    finally:
        runner.trainable = trainable
    ended = time.time()
    if code != 0:
        sys.exit(f"sweep_efficiency: hero-bench sweep exited with status {code}")
    table = pd.read_csv(next((folder / "results").glob("*/trials.csv")), dtype={"trial_id": str})
    workers = [json.loads(p.read_text()) for p in profiles.glob("*.json")]
    return {"started": started, "ended": ended, "driver_cpu": time.process_time() - cpu_started,
            "seconds": dict(probe.seconds), "calls": dict(probe.calls), "marks": dict(probe.marks),
            "cpu": dict(zip(table["trial_id"], table["cpu_time_s"])), "trials": workers, "slots": at_once}


# ---------------------------------------------------------------------------------- the report

def breakdown(run):
    """[(label, worker-seconds)] of one sweep, summing to its wall time x its workers; and notes."""
    trials, cpu = run["trials"], run["cpu"]
    seconds, marks = run["seconds"], run["marks"]
    by_worker = collections.defaultdict(list)
    for t in trials:
        by_worker[t["pid"]].append(t)
    wall = run["ended"] - run["started"]

    def total(key):
        return sum(t["seconds"].get(key, 0.0) for t in trials)

    trial_wall = sum(t["exited"] - t["entered"] for t in trials)
    trial_cpu = sum(cpu.get(t["trial"], 0.0) for t in trials)
    setup = sum(t["built"] - t["entered"] for t in trials)
    checkpoints = sum(t["calls"].get("persist", 0) for t in trials)
    report = total("tune.report") - total("persist")
    saving = total("persist") + sum(t["report_callback_s"] for t in trials) - total("tune.report")
    snapshot = total("snapshot")
    rest = trial_wall - trial_cpu - setup - report - saving - snapshot
    first = {pid: min(ts, key=lambda t: t["entered"]) for pid, ts in by_worker.items()}
    last = {pid: max(ts, key=lambda t: t["exited"]) for pid, ts in by_worker.items()}
    gaps = sum(sum(b["entered"] - a["exited"] for a, b in zip(sorted(ts, key=lambda t: t["entered"]),
                                                              sorted(ts, key=lambda t: t["entered"])[1:]))
               for ts in by_worker.values())
    process = sum(first[p]["entered"] - max(first[p]["process_start"], run["started"]) for p in first)
    before = sum(first[p]["entered"] - run["started"] for p in first) - process
    all_done = max(t["exited"] for t in trials)
    tail = sum(all_done - last[p]["exited"] for p in last)
    after = (run["ended"] - all_done) * len(last)
    n = len(trials)
    rows = [
        ("trials' CPU time (cpu_time_s: training, per-epoch and end-of-trial evaluation)", trial_cpu),
        ("  in trials beyond it: set-up (config, checkpoint, data, model, optimizer)", setup),
        (f"  in trials beyond it: report round trips ({sum(t['calls'].get('tune.report', 0) for t in trials)} reports to Ray "
         f"for {sum(t['reports'] for t in trials)} epochs)", report),
        (f"  in trials beyond it: checkpoints ({checkpoints}: torch.save, persist to storage)", saving),
        ("  in trials beyond it: epoch snapshots (deep copies for checkpoints)", snapshot),
        ("  in trials beyond it: the rest (CPU taken by other processes, untimed steps)", rest),
        ("between a trial's end and the next one's start on its worker", gaps),
        ("before a worker's first trial: Ray start, Tuner set-up, until the worker process starts", before),
        ("before a worker's first trial: the worker process (actor start, imports)", process),
        ("after a worker's last trial: waiting for the other workers' last trials", tail),
        ("after the last trial: the Tuner's end, outputs, W&B summary, Ray shutdown", after),
    ]
    data = {"data": total("data"), "model": total("model"), "optimizer": total("optimizer"),
            "training (epochs' wall)": sum(t["epochs_s"] for t in trials), "evaluation (end of trial)": total("evaluation")}
    notes = [f"per trial ({n} trials): " + ", ".join(f"{k} {v / n:.3f} s" for k, v in data.items())
             + f"; first trial of a worker set-up {statistics.mean(first[p]['built'] - first[p]['entered'] for p in first):.2f} s, "
             f"later trials {statistics.mean([t['built'] - t['entered'] for t in trials if t not in first.values()] or [0]):.2f} s"]
    return wall, len(last), rows, notes


def driver_lines(run):
    seconds, calls, marks = run["seconds"], run["calls"], run["marks"]
    n = len(run["trials"])
    lines = []
    for label in ("Ray start", "sweep (hero_bench.sweep.run)", "Tuner.fit", "Ray experiment-state snapshots",
                  "outputs: tables and figures", "outputs: summary lines", "W&B summary run", "waiting for W&B's thread",
                  "Ray shutdown"):
        if label in seconds:
            lines.append(f"  {label}: {seconds[label]:.2f} s ({calls[label]} calls)")
    by_class = collections.defaultdict(float)
    for key, value in seconds.items():
        if "." in key and key.split(".")[1].startswith("on_"):
            by_class[key.split(".")[0]] += value
    for name, value in sorted(by_class.items(), key=lambda kv: -kv[1]):
        hooks = ", ".join(f"{key.split('.')[1]} {seconds[key]:.2f}" for key in sorted(seconds)
                          if key.startswith(name + ".") and seconds[key] >= 0.005)
        lines.append(f"  callback {name}: {value:.2f} s, {value / n:.3f} s per trial ({hooks})")
    workers = {t["pid"] for t in run["trials"]}
    children = marks.get("ray_cpu", {})
    ray_cpu = sum(v for pid, (v, _) in children.items() if pid not in workers)
    trials_cpu = sum(run["cpu"].values())
    beyond = sum(v for pid, (v, _) in children.items() if pid in workers) - trials_cpu
    by_name = collections.Counter()
    for pid, (v, name) in children.items():
        if pid not in workers:
            by_name[name] += v
    lines.append("  CPU time of Ray's own processes: " + ", ".join(f"{name} {v:.1f} s" for name, v in by_name.most_common()))
    lines.append(f"  CPU time: the driver process {run['driver_cpu']:.1f} s, Ray's own processes {ray_cpu:.1f} s "
                 f"(GCS, raylet, agents, idle workers), the trial workers beyond their trials' cpu_time_s {beyond:.1f} s; "
                 f"all of it {(run['driver_cpu'] + ray_cpu + beyond) / n:.2f} s per trial, "
                 f"{(run['driver_cpu'] + ray_cpu + beyond) / trials_cpu:.2f}x the trials' own")
    return lines


def load():
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f} (1/5 min)"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as hero-bench's --set")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="keep the grid points where KEY has VALUE (as its text)")
    parser.add_argument("--points", type=int, help="K grid points, evenly spaced over those kept")
    parser.add_argument("--seeds", type=int, help="the first S seeds")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--sweep-only", action="store_true", help="no in-process run (efficiency needs none)")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_SILENT", "true")
    config = config_module.load(experiment_files.resolve(args.experiment), args.set)
    where = dict(text.split("=", 1) for text in args.where)
    grid, seeds = chosen(config, where, args.points, args.seeds)
    n = len(grid) * len(seeds)
    resources = config.sweep.resources_per_trial
    cpus = os.cpu_count()
    at_once = min(int(cpus // resources.cpu), config.sweep.max_concurrent_trials or n, n)
    print(f"{config.name}: {n} trials ({len(grid)} points x {len(seeds)} seeds), {resources.cpu:g} CPU each, "
          f"{at_once} at a time on {cpus} cores; {args.rounds} round(s); {load()}", flush=True)
    results = []
    for round_ in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory(prefix="sweep_efficiency-") as tmp:
            folder = Path(tmp)
            if args.where or args.points or args.seeds:
                file = sample_file(config, grid, seeds, folder / "sample.yaml")
            else:
                file = folder / "experiment.yaml"
                file.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
            local = None
            if not args.sweep_only:
                local_load = load()
                local = in_process(config, grid, seeds)
                print(f"round {round_}: back to back in one process: {local[0]:.1f} s wall, Σ cpu_time_s {local[1]:.1f} s, "
                      f"efficiency on 1 core {local[1] / local[0]:.2f}; {local_load} before, {load()} after", flush=True)
            sweep_load = load()
            run = swept(file, folder, at_once)
        wall, workers, rows, notes = breakdown(run)
        cpu = sum(run["cpu"].values())
        sweep_wall = run["seconds"]["sweep (hero_bench.sweep.run)"]
        slots = at_once * resources.cpu
        results.append((wall, sweep_wall, cpu, local))
        print(f"\nround {round_}: hero-bench sweep: {wall:.1f} s for the command, {sweep_wall:.1f} s for the sweep; "
              f"Σ cpu_time_s {cpu:.1f} s; efficiency {cpu / (wall * slots):.2f} (command), {cpu / (sweep_wall * slots):.2f} (sweep)"
              + (f"; throughput {local[0] / wall:.2f}x the in-process run" if local else "")
              + f"; {sweep_load} before, {load()} after")
        print(f"where the time went: {wall:.1f} s x {workers} workers = {wall * workers:.1f} worker-seconds")
        for label, value in rows:
            print(f"  {value:9.1f} s {100 * value / (wall * workers):5.1f}%  {label}")
        for note in notes:
            print(f"  {note}")
        print("the sweep driver:")
        for line in driver_lines(run):
            print(line)
        print(flush=True)
    if args.rounds > 1:
        def median(values):
            return statistics.median(values)

        walls, sweeps, cpus_ = [r[0] for r in results], [r[1] for r in results], [r[2] for r in results]
        line = (f"medians of {args.rounds} rounds: command {median(walls):.1f} s, sweep {median(sweeps):.1f} s, "
                f"efficiency {median([c / (w * slots) for c, w in zip(cpus_, walls)]):.2f} (command), "
                f"{median([c / (s * slots) for c, s in zip(cpus_, sweeps)]):.2f} (sweep)")
        if results[0][3]:
            line += (f"; in-process {median([r[3][0] for r in results]):.1f} s, throughput "
                     f"{median([r[3][0] / r[0] for r in results]):.2f}x")
        print(line + f"; {load()}")


if __name__ == "__main__":
    main()
