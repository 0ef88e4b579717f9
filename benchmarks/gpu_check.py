"""One-shot GPU check: what a trial costs on a CUDA GPU, and how many trials a minute a GPU runs when
1, 2 or 4 trials share it. One run prints one table and writes it to OUT/gpu_check.md.

    PYTHONPATH=. python benchmarks/gpu_check.py [--out gpu_check] [--trials 8] [--parts ...] [--dry-run]

The core of it needs only what a bare GPU machine has (torch, numpy, pandas, scipy, PyYAML,
matplotlib, tqdm): no Ray, W&B, Optuna, mnist1d or scikit-learn; its data are synthetic images.

1. `epoch`: epoch time of sgd, sam, hero (fd, auto, exact) at fp32 and under bf16 autocast, through
   hero_bench.train.run_trial (every sweep trial's code): resnet20, batch 128, synthetic 3x32x32
   images of 10 classes (no download), the CIFAR experiments' settings (lr 0.1 cosine, momentum 0.9,
   weight decay 5e-4, radius 0.5 adaptive, hessian_coef 5). The first epoch pays for CUDA start-up
   and kernel selection, so the table gives the fastest later one.
2. `cosine`: the cosine of the finite-difference Hessian-vector product against the exact one on the
   GPU: hero with hvp auto checking on every step (as it does every 50), over the first steps, until
   auto switches to exact for good (a cosine below 0.99).
3. `packing`: --trials hero (auto) trials run by 1, 2 and 4 processes at once on the one GPU, each
   process training its share back to back with run_trial (what a sweep's workers do, without Ray):
   trials per minute over the wall time (process start-up included), each trial's mean epoch time
   (what sharing the GPU costs it), the largest peak memory of a trial (its process's allocator) and
   the most device memory in use at once (all processes, CUDA contexts and caches included).
4. `sweep`, only where Ray imports: `hero-bench sweep` (the command's own code, run in this process
   on a Ray started here with this machine's GPUs) of the same trials, with resources_per_trial.gpu
   1, 0.5 and 0.25: trials per minute over the sweep's wall time, each trial's mean epoch time and
   the devices the trials trained on. Each sweep's results folder is kept under OUT/sweeps/.

Sizes: 5000 images (4900 trained on), 3 epochs per run, 20 cosine steps; 8 trials of 2 epochs of
9800 images for packing and sweeps, with CPUs/4 threads (Ray: {cpu: CPUs/4}) per trial. Planned to
fit 5 minutes of GPU time; it has not run on a GPU yet, so that is an estimate. On a device machine,
from the repository's root: `PYTHONPATH=. python benchmarks/gpu_check.py --out $OUT`.

--dry-run does all of it on the CPU at toy sizes (the sweeps on a Ray that declares one GPU that is
not there; its trials warn and train on the CPU): it checks the script where there is no CUDA; its
figures mean nothing. Without CUDA and without --dry-run the script exits with status 1.
"""
import argparse
import dataclasses
import itertools
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
import yaml

from hero_bench.config import from_dict
from hero_bench.errors import HeroBenchError
from hero_bench.train import build, resolve_device, run_trial
from hero_bench.trials import DEVICE, GPU_IDS, STATUS

NO_EVAL = {"ptq_bits": [], "hessian": {"top_eigenvalue": False, "trace": False}, "weight_noise": {"sigmas": []}}
METHODS = [  # (label, optimizer section)
    ("sgd", {"name": "sgd"}),
    ("sam", {"name": "sam"}),
    ("hero fd", {"name": "hero", "hvp": "fd"}),
    ("hero auto", {"name": "hero", "hvp": "auto"}),
    ("hero exact", {"name": "hero", "hvp": "exact"}),
]
PRECISIONS = ("fp32", "bf16")
PER_GPU = (1, 2, 4)  # trials sharing the GPU at once: processes, or resources_per_trial.gpu 1, 0.5, 0.25
SWEEP_OPTIMIZER = {"name": "hero", "hvp": "auto"}
PARTS = ("epoch", "cosine", "packing", "sweep")
VAL_FRACTION = 0.02


@dataclasses.dataclass
class Sizes:
    side: int = 32  # image side: CIFAR's
    samples: int = 5000  # images of the epoch-time and cosine runs
    epochs: int = 3
    batch: int = 128
    cosine_steps: int = 20
    trials: int = 8  # per packing run and per sweep
    sweep_samples: int = 10000
    sweep_epochs: int = 2


DRY = Sizes(side=8, samples=48, epochs=1, batch=16, cosine_steps=2, trials=4, sweep_samples=48, sweep_epochs=1)


def experiment(name, sizes, samples, epochs, optimizer, precision, device, threads=None):
    return {
        "name": name,
        "data": {"name": "synthetic", "val_fraction": VAL_FRACTION,
                 "args": {"input_shape": [3, sizes.side, sizes.side], "num_classes": 10, "num_samples": samples,
                          "num_test": max(10, samples // 5)}},
        "model": {"name": "resnet20"},
        "train": {"epochs": epochs, "batch_size": sizes.batch, "lr": 0.1, "schedule": "cosine", "momentum": 0.9,
                  "weight_decay": 5e-4, "device": device, "precision": precision, "threads": threads},
        "optimizer": {"radius": 0.5, "hessian_coef": 5.0, "adaptive": True, **optimizer},
        "evaluate": NO_EVAL,
    }


def epoch_time(raw):
    """(fastest epoch after the first in seconds, or nan if none finished; final metrics) of one trial."""
    epoch_times = {}  # by epoch: a diverged trial reports its last finished epoch once more

    def report(metrics, state):
        if "epoch" in metrics:
            epoch_times[metrics["epoch"]] = metrics["epoch_time_s"]

    result = run_trial(raw, report=report)
    later = [s for epoch, s in epoch_times.items() if epoch > 1] or list(epoch_times.values())
    return min(later, default=float("nan")), result


def fd_exact_cosines(raw, steps):
    """hero auto's fd-vs-exact cosine at each of the first `steps` steps (a check on every one),
    up to and including the one after which it switched to exact; and that step, or None."""
    config = from_dict(raw)
    device = resolve_device(config.train.device)
    dataset, model, optimizer = build(config, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if config.train.precision == "bf16" else nullcontext()
    model.train()
    cosines = []
    batches = dataset.train_batches(config.train.batch_size, torch.Generator().manual_seed(config.train.seed))
    for inputs, targets in itertools.islice(batches, steps):
        def closure():
            with autocast:
                return F.cross_entropy(model(inputs).float(), targets)

        optimizer.step(closure)
        cosines.append(optimizer.hvp_check_cosine)
        if optimizer.hvp_fallback_step is not None:
            break
    return cosines, optimizer.hvp_fallback_step


def trial_share(raws):
    """Run the trials `raws` back to back in this process (a packing worker): each one's epoch times
    and final metrics."""
    return [epoch_time(raw) for raw in raws]


def packed(raws, processes, device):
    """The trials `raws` run by `processes` processes at once, each training its share back to back:
    (wall seconds from the processes' start to the last trial's end, [(epoch s, result)], the most
    device memory in use at once in MB, or None off CUDA). Processes are spawned, never forked, so
    each starts its own CUDA context as a sweep's worker does."""
    shares = [raws[i::processes] for i in range(processes)]
    peak, done = [0.0], threading.Event()

    def watch():  # the device's memory in use, from outside the processes: every context and cache
        while not done.wait(0.2):
            free, total = torch.cuda.mem_get_info()
            peak[0] = max(peak[0], (total - free) / 2**20)

    watcher = threading.Thread(target=watch, daemon=True) if device == "cuda" else None
    started = time.perf_counter()
    if watcher:
        watcher.start()
    try:
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = [r for share in pool.map(trial_share, shares) for r in share]
    finally:
        done.set()
    return time.perf_counter() - started, results, peak[0] if watcher else None


def sweep(raw, share, cpus, trials, folder):
    """Run `raw` as a sweep of `trials` seeds at resources_per_trial {cpu, gpu: share} through the
    hero-bench command, on the Ray this process started; (seconds, its trials table)."""
    from hero_bench import cli

    raw = {**raw, "sweep": {"seeds": list(range(trials)), "resources_per_trial": {"cpu": cpus, "gpu": share}, "max_failures": 0},
           "tracking": {"wandb": "disabled"}}
    path = folder / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with tempfile.TemporaryDirectory() as storage:  # Ray's run folders and checkpoints: not worth bringing back
        started = time.perf_counter()
        code = cli.main(["sweep", str(path), "--results", str(folder), "--storage", storage, "--overwrite"])
        seconds = time.perf_counter() - started
    if code != 0:
        raise HeroBenchError(f"hero-bench sweep {path} exited with status {code}")
    return seconds, pd.read_csv(folder / raw["name"] / "trials.csv")


def markdown(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def guarded(row, measure):
    """measure(), or `row` completed by the error: a one-shot run keeps every figure it got (a CUDA
    out-of-memory or a failed sweep costs one row, not the table)."""
    try:
        return measure()
    except Exception as exc:  # noqa: BLE001
        lines = str(exc).strip().splitlines() or [""]
        return row + [f"error: {type(exc).__name__}: {lines[-1][:200]}"]


def epoch_rows(sizes, device):
    rows, sgd = [], {}
    for precision, (label, optimizer) in itertools.product(PRECISIONS, METHODS):
        def measure():
            raw = experiment("gpu_check", sizes, sizes.samples, sizes.epochs, optimizer, precision, device)
            seconds, result = epoch_time(raw)
            sgd.setdefault(precision, seconds)  # sgd comes first
            fallback = "" if result.get("hvp_fallback_step") is None else f", fd -> exact at step {result['hvp_fallback_step']}"
            return [label, precision, f"{seconds:.3f}", f"{seconds / sgd[precision]:.2f}", result["grad_evals"], result["hvp_evals"],
                    f"{result['peak_mem_mb']:,.0f}", f"{result['train_loss']:.3f}", result[STATUS] + fallback]

        rows.append(guarded([label, precision], measure))
    return rows


def cosine_rows(sizes, device):
    rows = []
    for precision in PRECISIONS:
        def measure():
            auto = {"name": "hero", "hvp": "auto", "hvp_check_every": 1}
            cosines, fallback = fd_exact_cosines(experiment("gpu_check", sizes, sizes.samples, 1, auto, precision, device), sizes.cosine_steps)
            return [precision, len(cosines), f"{min(cosines):.6f}", f"{statistics.median(cosines):.6f}",
                    "never" if fallback is None else f"after step {fallback}"]

        rows.append(guarded([precision], measure))
    return rows


def packing_rows(sizes, cpus, device):
    rows = []
    for processes in PER_GPU:
        def measure():
            raws = [experiment(f"packing-{processes}", sizes, sizes.sweep_samples, sizes.sweep_epochs, SWEEP_OPTIMIZER, "fp32",
                               device, cpus) for _ in range(sizes.trials)]
            for seed, raw in enumerate(raws):  # one trial per seed, as the sweeps below run them
                raw["train"]["seed"] = seed
            seconds, results, in_use = packed(raws, processes, device)
            completed = sum(result[STATUS] == "completed" for _, result in results)
            return [processes, len(results), completed, f"{seconds:.1f}", f"{60 * len(results) / seconds:.1f}",
                    f"{statistics.mean(result['time_per_epoch_s'] for _, result in results):.3f}",
                    f"{max(result['peak_mem_mb'] for _, result in results):,.0f}",
                    "n/a (on the CPU)" if in_use is None else f"{in_use:,.0f}"]

        rows.append(guarded([processes], measure))
    return rows


def throughput_rows(sizes, cpus, folder):
    rows = []
    for per_gpu in PER_GPU:
        share = 1 / per_gpu
        resources = f"{{cpu: {cpus}, gpu: {share:g}}}"

        def measure():
            raw = experiment(f"packing-{per_gpu}", sizes, sizes.sweep_samples, sizes.sweep_epochs, SWEEP_OPTIMIZER, "fp32", "auto", cpus)
            seconds, table = sweep(raw, share, cpus, sizes.trials, folder)
            placed = ", ".join(sorted(set(table[DEVICE].astype(str) + " " + table[GPU_IDS].astype(str))))
            return [per_gpu, resources, len(table), (table[STATUS] == "completed").sum(), f"{seconds:.1f}",
                    f"{60 * len(table) / seconds:.1f}", f"{table['time_per_epoch_s'].mean():.3f}", placed]

        rows.append(guarded([per_gpu, resources], measure))
    return rows


def ray_module():
    """Ray, or None where it cannot be imported (a bare GPU machine)."""
    try:
        import ray
    except ImportError:
        return None
    return ray


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check", help="folder for gpu_check.md and the sweeps' results (default gpu_check)")
    parser.add_argument("--trials", type=int, help=f"trials per packing run and per sweep (default {Sizes.trials}; {DRY.trials} in a dry run)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU at toy sizes, Ray declaring a GPU: checks the script, measures nothing")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device is available (torch.cuda.is_available() is False); run it on a machine "
                 "with an NVIDIA GPU, or pass --dry-run to check the script on the CPU")
    sizes = DRY if args.dry_run else Sizes()
    if args.trials:
        sizes = dataclasses.replace(sizes, trials=args.trials)
    device = "cpu" if args.dry_run else "cuda"
    cpus = max(1, (os.cpu_count() or 1) // 4)  # four trials at a time fit the machine's cores
    ray = ray_module() if "sweep" in args.parts else None
    out = Path(args.out)
    (out / "sweeps").mkdir(parents=True, exist_ok=True)
    table = out / "gpu_check.md"
    what = ("DRY RUN on the CPU, Ray declaring one GPU that is not there: the figures mean nothing" if args.dry_run
            else f"{torch.cuda.get_device_name()} x{torch.cuda.device_count()}, CUDA {torch.version.cuda}")
    parts = [f"# gpu_check: {what}", f"torch {torch.__version__}, ray {ray.__version__ if ray else 'not used'}, "
             f"{os.cpu_count()} CPUs; resnet20 on synthetic 3x{sizes.side}x{sizes.side} images of 10 classes, batch {sizes.batch}"]

    def add(*texts):  # the file grows section by section: a run cut short still brings back what it measured
        parts.extend(texts)
        table.write_text("\n\n".join(parts) + "\n")
        print("\n\n".join(texts) + "\n", flush=True)

    if "epoch" in args.parts:
        add(f"## Epoch time\n\n{train_images(sizes.samples)} training images, {sizes.epochs} epochs per run, the fastest after the first.",
            markdown(["method", "precision", "epoch s", "x sgd", "grads", "hvps", "peak MB", "loss", "status"], epoch_rows(sizes, device)))
    if "cosine" in args.parts:
        add(f"## fd vs exact Hessian-vector product\n\nhero auto with a check on every step, the first {sizes.cosine_steps} steps.",
            markdown(["precision", "checks", "min cosine", "median cosine", "auto switched to exact"], cosine_rows(sizes, device)))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # what the runs above cached stays out of the way of what follows
    if "packing" in args.parts:
        add(f"## Packing\n\n{sizes.trials} hero (auto) trials, {sizes.sweep_epochs} epoch(s) of {train_images(sizes.sweep_samples)} "
            f"images each, run by 1, 2 and 4 processes at once on one {'CPU (dry run)' if args.dry_run else 'GPU'}, "
            f"{cpus} thread(s) each, without Ray.",
            markdown(["processes", "trials", "completed", "wall s", "trials/min", "trial epoch s", "peak MB of a trial",
                      "device MB in use at most"], packing_rows(sizes, cpus, device)))
    if "sweep" in args.parts:
        add("## Sweep throughput\n\n" + (sweep_section(ray, sizes, cpus, out, args.dry_run) if ray
                                         else "skipped: Ray cannot be imported here"))
    print(f"wrote {table}; the sweeps' results are under {out / 'sweeps'}")
    return 0


def sweep_section(ray, sizes, cpus, out, dry_run):
    ray.init(address="local", num_cpus=4 * cpus, num_gpus=1 if dry_run else None, include_dashboard=False, configure_logging=False)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        rows = throughput_rows(sizes, cpus, out / "sweeps")
    finally:
        ray.shutdown()
    return (f"`hero-bench sweep` of {sizes.trials} hero (auto) trials, {sizes.sweep_epochs} epoch(s) of "
            f"{train_images(sizes.sweep_samples)} images each, on the {gpus:g} GPU(s) of a local Ray.\n\n"
            + markdown(["trials per GPU", "resources_per_trial", "trials", "completed", "sweep s", "trials/min",
                        "trial epoch s", "device gpu_ids"], rows))


def train_images(samples):
    return samples - round(VAL_FRACTION * samples)


if __name__ == "__main__":
    sys.exit(main())
