"""Epoch time of every method on one CUDA GPU, on CIFAR-shaped data: what a trial of the CIFAR sweeps costs.

One trial per method through hero_bench.train.run_trial (the code path of every sweep trial): sgd, sam,
gradnorm, and hero with each Hessian-vector product (fd, auto, exact), on synthetic 3x32x32 images of
10 classes (no download), resnet20 at batch 128 and the experiments' other settings (lr 0.1 cosine,
momentum 0.9, weight decay 5e-4, radius 0.5 adaptive, hessian_coef 5.0 for hero, 0.1 for gradnorm).
The first epoch pays for CUDA start-up and kernel selection, so the table reports the fastest later
epoch. --bf16 adds sgd and hero (auto) under bf16 autocast.

    python benchmarks/gpu_check.py [--epochs 3] [--samples 5000] [--model resnet20] [--bf16]

A CIFAR sweep trial trains 45k images (90% of 50k) for 200 epochs: scale an epoch time here by
200 x 45000 / (training images here, 98% of --samples) for its training time.
Without a CUDA device it says so and exits with status 1.
"""
import argparse
import sys

import torch

from hero_bench.config import from_dict
from hero_bench.errors import HeroBenchError
from hero_bench.train import run_trial

NO_EVAL = {"ptq_bits": [], "hessian": {"top_eigenvalue": False, "trace": False}, "weight_noise": {"sigmas": []}}
# (label, optimizer section, precision)
RUNS = [
    ("sgd", {"name": "sgd"}, "fp32"),
    ("sam", {"name": "sam"}, "fp32"),
    ("gradnorm", {"name": "gradnorm", "hessian_coef": 0.1}, "fp32"),
    ("hero fd", {"name": "hero", "hvp": "fd"}, "fp32"),
    ("hero auto", {"name": "hero", "hvp": "auto"}, "fp32"),
    ("hero exact", {"name": "hero", "hvp": "exact"}, "fp32"),
]
BF16_RUNS = [
    ("sgd bf16", {"name": "sgd"}, "bf16"),
    ("hero auto bf16", {"name": "hero", "hvp": "auto"}, "bf16"),
]


def trial_config(args, optimizer, precision):
    return from_dict({
        "name": "gpu_check",
        "data": {"name": "synthetic", "val_fraction": 0.02,
                 "args": {"input_shape": [3, 32, 32], "num_classes": 10, "num_samples": args.samples, "num_test": 1000}},
        "model": {"name": args.model},
        "train": {"epochs": args.epochs, "batch_size": 128, "lr": 0.1, "schedule": "cosine", "momentum": 0.9,
                  "weight_decay": 5e-4, "device": "cuda", "precision": precision},
        "optimizer": {"radius": 0.5, "hessian_coef": 5.0, "adaptive": True, **optimizer},
        "evaluate": NO_EVAL,
    })


def measure(args, optimizer, precision):
    """(fastest epoch after the first in seconds, or nan if none finished; final metrics) of one trial."""
    epoch_times = {}  # by epoch: a diverged trial reports its last finished epoch once more

    def report(metrics, state):
        if "epoch" in metrics:
            epoch_times[metrics["epoch"]] = metrics["epoch_time_s"]

    result = run_trial(trial_config(args, optimizer, precision), report=report)
    later = [s for epoch, s in epoch_times.items() if epoch > 1] or list(epoch_times.values())
    return min(later, default=float("nan")), result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial, the first being warm-up (default 3)")
    parser.add_argument("--samples", type=int, default=5000, help="synthetic training images (default 5000)")
    parser.add_argument("--model", default="resnet20", help="a registered model (default resnet20)")
    parser.add_argument("--bf16", action="store_true", help="also time sgd and hero (auto) under bf16 autocast")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device is available (torch.cuda.is_available() is False); run it on a machine with an NVIDIA GPU")

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}: {args.model}, batch 128, "
          f"{args.samples} synthetic 3x32x32 images, {args.epochs} epochs per method")
    print(f"{'method':<16}{'epoch s':>9}{'x sgd':>7}{'grads':>8}{'hvps':>7}{'peak MB':>9}{'loss':>8}  status")
    times = {}
    for label, optimizer, precision in RUNS + (BF16_RUNS if args.bf16 else []):
        try:
            seconds, result = measure(args, optimizer, precision)
        except HeroBenchError as exc:
            sys.exit(f"gpu_check: {exc}")
        times[label] = seconds
        fallback = "" if result.get("hvp_fallback_step") is None else f", fd -> exact at step {result['hvp_fallback_step']}"
        print(f"{label:<16}{seconds:>9.2f}{seconds / times['sgd']:>7.2f}{result['grad_evals']:>8}{result['hvp_evals']:>7}"
              f"{result['peak_mem_mb']:>9,.0f}{result['train_loss']:>8.3f}  {result['status']}{fallback}")
    for hvp in ("fd", "auto", "exact"):
        print(f"HERO ({hvp}) / SGD epoch time: {times[f'hero {hvp}'] / times['sgd']:.2f}")
    if args.bf16:
        print(f"HERO (auto) bf16 / SGD bf16 epoch time: {times['hero auto bf16'] / times['sgd bf16']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
