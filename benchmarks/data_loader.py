"""Samples/s of hero-bench's in-memory batch pipeline against a torch DataLoader with per-image transforms.

Both sides deliver shuffled, normalized, randomly cropped (4-pixel padding) and flipped 3x32x32
float batches of 128:
- hero-bench: Dataset.train_batches over tensors already in memory, augmentation on the batch tensor;
- baseline: torch.utils.data.DataLoader over torchvision's CIFAR10 class, reading the same kind of
  CIFAR python batches from a temp dir, with RandomCrop, RandomHorizontalFlip, ToTensor, Normalize
  per image, num_workers 0 and 2.
Each pipeline runs one warm-up epoch, then timed epochs; the best epoch counts. Run: python benchmarks/data_loader.py
"""
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.datasets as tvd
import torchvision.transforms as T

from hero_bench import data

NUM_IMAGES = 10_000
BATCH_SIZE = 128
THREADS = 2


class LocalCIFAR10(tvd.CIFAR10):
    """torchvision's CIFAR10 reader over locally written batches: same parsing, no md5 (md5 None)."""

    train_list = [[f"data_batch_{i}", None] for i in range(1, 6)]
    test_list = [["test_batch", None]]
    meta = {"filename": "batches.meta", "key": "label_names", "md5": None}


def write_cifar(root, rng):
    """NUM_IMAGES random uint8 images as five CIFAR-10 python training batches plus a small test batch."""
    folder = Path(root) / LocalCIFAR10.base_folder
    folder.mkdir(parents=True)
    sizes = [NUM_IMAGES // 5] * 5 + [100]
    for (name, _), n in zip(LocalCIFAR10.train_list + LocalCIFAR10.test_list, sizes):
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(k) for k in range(10)]}))


def samples_per_second(epoch, epochs):
    """Run one warm-up epoch, then `epochs` timed ones; the best epoch's rate, the one least disturbed
    by other processes. epoch() iterates once over the data and returns the number of samples."""
    epoch()
    rates = []
    for _ in range(epochs):
        start = time.perf_counter()
        count = epoch()
        rates.append(count / (time.perf_counter() - start))
    return max(rates)


def hero_bench_rate(epochs=10):
    ds = data.load("synthetic", input_shape=(3, 32, 32), num_samples=NUM_IMAGES, num_test=10, val_fraction=0.01)
    ds.augment, ds.flip = True, True  # the CIFAR recipe: 4-pixel pad-and-crop plus horizontal flip
    generator = torch.Generator().manual_seed(0)
    return samples_per_second(lambda: sum(len(y) for _, y in ds.train_batches(BATCH_SIZE, generator)), epochs)


def dataloader_rate(root, num_workers, epochs=3):
    transform = T.Compose([
        T.RandomCrop(32, padding=4),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    ])
    dataset = LocalCIFAR10(root, train=True, transform=transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=num_workers,
        persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(0),
    )
    return samples_per_second(lambda: sum(len(y) for _, y in loader), epochs)


def main():
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as root:
        write_cifar(root, np.random.default_rng(0))
        rates = {
            "DataLoader, num_workers=0": dataloader_rate(root, 0),
            "DataLoader, num_workers=2": dataloader_rate(root, 2),
        }
    ours = hero_bench_rate()
    print(f"{NUM_IMAGES} CIFAR-shaped images, batch {BATCH_SIZE}, {THREADS} threads, crop+flip+normalize")
    print(f"{'pipeline':<34}{'samples/s':>12}")
    for name, rate in rates.items():
        print(f"{name:<34}{rate:>12,.0f}")
    print(f"{'hero-bench train_batches':<34}{ours:>12,.0f}")
    print(f"speed-up over the best DataLoader: {ours / max(rates.values()):.1f}x")


if __name__ == "__main__":
    main()
