"""Datasets held whole as tensors on the trial's device, with seeded splits and label noise.

Every dataset is read once, converted to one float32 tensor per split and normalized; batches are
slices of those tensors and augmentation (pad-and-crop, horizontal flip) works on a whole batch at
once, so there is no per-sample Python in the training loop (the airbench habit).

Splits: a stratified validation split is held out of the training set (`val_fraction`, chosen by
the trial seed); the test split is the dataset's own and stays clean. Label noise re-draws the label
of a seeded fraction of the remaining training samples (docs/metrics.md, "Data splits").
"""
import hashlib
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hero_bench.atomic import write_atomic
from hero_bench.errors import ConfigError, DatasetNotFoundError
from hero_bench.registry import Registry, call_problem
from hero_bench.validation import boolean, integer, integers, number

FACTORY_ARGS = ("root", "download")  # what load() gives every dataset factory; data.args gives the rest
DATASETS = Registry("dataset", check=lambda factory: call_problem(factory, keywords=FACTORY_ARGS))

CROP_PADDING = 4  # pixels of padding for random crops, the standard CIFAR recipe
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0  # fixed so every trial sees the same digits test set
MAX_SYNTHETIC_VALUES = 2**28  # synthetic data drawn at once: 1 GiB of float32


@dataclass
class Source:
    """What a dataset factory returns: raw splits, not yet normalized: images (N, C, H, W) with pixel
    values in [0, 1], or signals (N, C, L).

    `mean`/`std` are per-channel normalization constants; None means "compute them from train_x".
    `augment` turns on random crops, `flip` adds horizontal flips (only where they keep the label).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple = None
    std: tuple = None
    augment: bool = False
    flip: bool = False


@dataclass
class Dataset:
    """One trial's data: normalized float32 inputs (N, C, H, W) or (N, C, L) and int64 labels, all on
    one device.

    train_y holds the labels used for training (noisy when label_noise > 0); train_y_clean the
    original ones. label_noise_realized = mean(train_y != train_y_clean).
    """

    name: str
    num_classes: int
    input_shape: tuple
    train_x: torch.Tensor
    train_y: torch.Tensor
    train_y_clean: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple
    std: tuple
    augment: bool = False
    flip: bool = False
    label_noise_realized: float = 0.0

    def train_batches(self, batch_size, generator):
        """One epoch of shuffled (x, y) training batches; augmented when `augment` is true.

        All randomness (order, crop offsets, flips) comes from `generator`, so an epoch is a pure
        function of the generator's state.
        """
        device = self.train_x.device
        order = torch.randperm(len(self.train_x), generator=generator, device=generator.device).to(device)
        # a padded pixel is black, as in torchvision's RandomCrop(padding=4) before Normalize
        fill = torch.tensor([-m / s for m, s in zip(self.mean, self.std)], device=device)
        for idx in torch.split(order, batch_size):
            x = self.train_x[idx]
            if self.augment:
                x = random_crop_flip(x, generator, CROP_PADDING, self.flip, fill)
            yield x, self.train_y[idx]


def crop_flip(x, top, left, flip, padding, fill):
    """Crop each image of a batch out of its padded copy, then mirror the flagged ones.

    P is x padded by `padding` pixels of value fill[c] on every side; for image n
        out[n, c, i, j] = P[n, c, top[n] + i, left[n] + j']   with j' = W-1-j if flip[n] else j.
    top, left: int64 (N,) in [0, 2*padding]; flip: bool (N,); fill: (C,) per-channel pad value.
    """
    n, c, h, w = x.shape
    padded = fill.view(1, c, 1, 1).expand(n, c, h + 2 * padding, w + 2 * padding).clone()
    padded[:, :, padding : padding + h, padding : padding + w] = x
    cols = torch.arange(w, device=x.device)
    rows = top[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = left[:, None] + torch.where(flip[:, None], w - 1 - cols, cols)  # (N, W)
    # one gather over each flattened padded image is several times faster than 4-D fancy indexing
    flat = (rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return padded.view(n, c, -1).gather(2, flat).view(n, c, h, w)


def random_crop_flip(x, generator, padding, flip, fill):
    """crop_flip with offsets uniform in [0, 2*padding] and (if `flip`) a fair coin per image."""
    n = len(x)
    top, left = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=generator.device)
    if flip:
        mirror = torch.rand(n, generator=generator, device=generator.device) < 0.5
    else:
        mirror = torch.zeros(n, dtype=torch.bool, device=generator.device)
    return crop_flip(x, top.to(x.device), left.to(x.device), mirror.to(x.device), padding, fill)


def stratified_split(labels, fraction, rng):
    """Split indices into (kept, held_out) with every class held out in proportion.

    Class k (n_k samples) gives floor(fraction * n_k) samples to held_out, and the classes with the
    largest remainders one more each until held_out has round(fraction * n) samples. Which samples
    (and which classes on tied remainders) is drawn from the numpy Generator `rng`; both index
    arrays are sorted.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    exact = fraction * counts
    take = np.floor(exact).astype(int)
    short = int(fraction * len(labels) + 0.5) - take.sum()
    by_remainder = np.lexsort((rng.random(len(classes)), take - exact))  # largest remainder first
    take[by_remainder[:short]] += 1
    held = [rng.permutation(np.flatnonzero(labels == k))[:t] for k, t in zip(classes, take)]
    held = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(labels)), held), held


NOISE_KINDS = ("uniform", "flip")


def noisy_labels(labels, p, num_classes, rng, kind="uniform"):
    """Change the labels of round(p * n) samples, chosen by `rng`.

    uniform: each chosen label is re-drawn uniformly from all K classes, so it keeps its old value
        with probability 1/K and about p (K-1)/K of the labels end up wrong, as in the classic
        random-label experiments.
    flip (symmetric noise): each chosen label moves to one of the other K-1 classes uniformly,
        y -> (y + u) mod K with u uniform in 1..K-1, so exactly a fraction p ends up wrong.
    """
    noisy = np.array(labels, copy=True)
    chosen = rng.permutation(len(noisy))[: int(p * len(noisy) + 0.5)]
    if kind == "uniform":
        noisy[chosen] = rng.integers(0, num_classes, size=len(chosen))
    else:
        noisy[chosen] = (noisy[chosen] + rng.integers(1, num_classes, size=len(chosen))) % num_classes
    return noisy


def default_root():
    """$XDG_CACHE_HOME/hero-bench/data, or ~/.cache/hero-bench/data."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "hero-bench" / "data"


_last_source = {}  # the last dataset read in this process: {key: Source}


def cached_source(name, root, download, dataset_args):
    """The Source of a dataset, read once per process for consecutive trials on the same data (a
    sweep's worker runs trial after trial): the factories read files or parse, and scikit-learn's
    digits took 0.1 s a trial of about 1 s. One dataset is kept, the last one asked for, so a worker
    holds at most one more copy of it. A Source is never written to: every trial's tensors are new."""
    key = json.dumps([name, str(root), download, dataset_args], sort_keys=True, default=str)
    if key not in _last_source:
        _last_source.clear()
        _last_source[key] = DATASETS.get(name)(root=root, download=download, **dataset_args)
    return _last_source[key]


def load(name, *, seed=0, device="cpu", root=None, download=False, val_fraction=0.1, label_noise=0.0,
         label_noise_kind="uniform", **dataset_args):
    """Load dataset `name` onto `device`, hold out a stratified validation split and add label noise
    (`label_noise_kind`: see noisy_labels).

    The split and the noisy labels are pure functions of `seed` (separate random streams, so the
    split does not change with label_noise); validation and test labels stay clean.
    `dataset_args` go to the dataset's factory (e.g. num_samples for synthetic, augment for cifar10).
    The values are checked here as the experiment schema checks them (`check_args`).
    """
    check_args(name, dataset_args)
    root = default_root() if root is None else Path(root).expanduser()
    source = cached_source(name, root, download, dataset_args)

    # normalization constants come from the whole training set, so they do not depend on the seed
    # per channel: over every dimension but the channel one, for images (N, C, H, W) and signals (N, C, L)
    others = (0, *range(2, source.train_x.dim()))
    means = source.mean or tuple(source.train_x.mean(dim=others).tolist())
    stds = source.std or tuple(source.train_x.std(dim=others).tolist())
    shape = (1, -1, *[1] * (source.train_x.dim() - 2))
    mean, std = torch.tensor(means).view(shape), torch.tensor(stds).view(shape)

    def prepare(x):
        return ((x - mean) / std).to(device=device, dtype=torch.float32)

    labels = source.train_y.numpy()
    train_idx, val_idx = stratified_split(labels, val_fraction, np.random.default_rng([seed, 1]))
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ConfigError(
            f"data.val_fraction={val_fraction} leaves an empty split of the {len(labels)} training samples"
        )
    clean = labels[train_idx]
    noisy = noisy_labels(clean, label_noise, source.num_classes, np.random.default_rng([seed, 2]), label_noise_kind)
    return Dataset(
        name=name,
        num_classes=source.num_classes,
        input_shape=tuple(source.train_x.shape[1:]),
        train_x=prepare(source.train_x[train_idx]),
        train_y=torch.from_numpy(noisy).to(device),
        train_y_clean=torch.from_numpy(clean).to(device),
        val_x=prepare(source.train_x[val_idx]),
        val_y=torch.from_numpy(labels[val_idx]).to(device),
        test_x=prepare(source.test_x),
        test_y=source.test_y.to(device, copy=True),  # a trial's own: the source is kept for the next trial
        mean=means,
        std=stds,
        augment=source.augment,
        flip=source.flip,
        label_noise_realized=float(np.mean(noisy != clean)),
    )


def check_args(name, dataset_args):
    """Refuse data.args that dataset `name` cannot be loaded with, before anything is loaded (the
    schema calls this for the experiment and for every sweep trial): keywords its factory does not
    take, and values its entry in ARG_CHECKS refuses (type, range, NaN)."""
    DATASETS.check(name, dataset_args, "data.args", skip=FACTORY_ARGS, values=ARG_CHECKS)


def _images(array, channels_last):
    """uint8 images (N, H, W), (N, H, W, C) or (N, C, H, W) -> float32 (N, C, H, W) in [0, 1]."""
    x = torch.as_tensor(array)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif channels_last:
        x = x.permute(0, 3, 1, 2)
    return x.contiguous().float() / 255


def _signals(array):
    """float signals (N, L) -> float32 (N, 1, L)."""
    return torch.tensor(array, dtype=torch.float32).unsqueeze(1)


def _labels(values):
    return torch.as_tensor(np.asarray(values), dtype=torch.int64)


def torchvision_datasets():
    """torchvision.datasets, imported on first use: the import takes seconds (it pulls in
    torch._dynamo), and a trial worker on digits or synthetic data never needs it."""
    import torchvision.datasets

    return torchvision.datasets


def _open(name, cls, where, **kwargs):
    """Build a torchvision dataset; its missing-file errors become one-line DatasetNotFoundErrors."""
    try:
        return cls(**kwargs)
    except (RuntimeError, OSError) as err:
        if kwargs["download"]:
            reason = " ".join(str(err).split())
            raise DatasetNotFoundError(f"could not download {name} to {where}: {reason}") from err
        raise DatasetNotFoundError(
            f"{name} files not found or corrupted under {where}; "
            f"set data.download: true to fetch them, or place the files there (data.root sets the folder)"
        ) from err


def _mnist_like(name, cls, root, download, mean, std):
    where = Path(root) / cls.__name__ / "raw"
    train, test = (_open(name, cls, where, root=root, train=t, download=download) for t in (True, False))
    return Source(
        _images(train.data, False), _labels(train.targets), _images(test.data, False), _labels(test.targets),
        num_classes=10, mean=mean, std=std,
    )


def _cifar(name, cls, num_classes, root, download, mean, std, augment):
    where = Path(root) / cls.base_folder
    train, test = (_open(name, cls, where, root=root, train=t, download=download) for t in (True, False))
    return Source(
        _images(train.data, True), _labels(train.targets), _images(test.data, True), _labels(test.targets),
        num_classes=num_classes, mean=mean, std=std, augment=augment, flip=True,
    )


@DATASETS.register("digits")
def digits(*, root, download):
    """scikit-learn's bundled 8x8 handwritten digits: 1797 images, 10 classes, no download.

    Pixel values 0..16 are scaled to [0, 1]; a fixed stratified 80/20 split (seed independent of the
    trial) gives the test set, so every trial is scored on the same images.
    """
    from sklearn.datasets import load_digits  # imported here: scikit-learn takes a second to import

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16
    y = _labels(bunch.target)
    train, test = stratified_split(bunch.target, DIGITS_TEST_FRACTION, np.random.default_rng(DIGITS_SPLIT_SEED))
    return Source(x[train], y[train], x[test], y[test], num_classes=10)


@DATASETS.register("mnist")
def mnist(*, root, download):
    """MNIST, 60k/10k 28x28 grey digits, read by torchvision.datasets.MNIST from root/MNIST/raw."""
    return _mnist_like("mnist", torchvision_datasets().MNIST, root, download, mean=(0.1307,), std=(0.3081,))


@DATASETS.register("fashion_mnist")
def fashion_mnist(*, root, download):
    """Fashion-MNIST, 60k/10k 28x28 grey clothing images, from root/FashionMNIST/raw."""
    return _mnist_like("fashion_mnist", torchvision_datasets().FashionMNIST, root, download, mean=(0.2860,), std=(0.3530,))


@DATASETS.register("cifar10")
def cifar10(*, root, download, augment=True):
    """CIFAR-10, 50k/10k 32x32 colour images, 10 classes; random crop + flip when augment."""
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    return _cifar("cifar10", torchvision_datasets().CIFAR10, 10, root, download, mean, std, augment)


@DATASETS.register("cifar100")
def cifar100(*, root, download, augment=True):
    """CIFAR-100, 50k/10k 32x32 colour images, 100 classes; random crop + flip when augment."""
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    return _cifar("cifar100", torchvision_datasets().CIFAR100, 100, root, download, mean, std, augment)


@DATASETS.register("svhn")
def svhn(*, root, download, augment=True):
    """SVHN, 73k/26k 32x32 house-number digits (the 'extra' split is not used); random crop when augment.

    No flips: a mirrored digit is a different or invalid symbol (2, 5, 7 ...), so flipping would
    corrupt labels.
    """
    cls = torchvision_datasets().SVHN
    where = Path(root) / cls.split_list["train"][1]
    train, test = (_open("svhn", cls, where, root=root, split=s, download=download) for s in ("train", "test"))
    return Source(
        _images(train.data, False), _labels(train.labels), _images(test.data, False), _labels(test.labels),
        num_classes=10, mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970), augment=augment,
    )


@DATASETS.register("mnist1d")
def mnist1d(*, root, download, num_samples=5000, train_split=0.8, template_len=12, padding=(36, 60), scale_coeff=0.4,
            max_translation=48, corr_noise_scale=0.25, iid_noise_scale=2e-2, shear_scale=0.75, shuffle_seq=False,
            final_seq_length=40, data_seed=42):
    """MNIST-1D (Greydanus 2020): procedurally generated 1-d digit signals (N, 1, 40), 10 classes.

    Made by the `mnist1d` package's own generator, `make_dataset`, with these arguments (the defaults
    are the package's, i.e. the published dataset: 4000 training and 1000 test signals) and never its
    download path: nothing is fetched. `data_seed` is the generator's seed, the dataset's identity,
    separate from the trial seed. The arrays are cached under root/mnist1d/, one file per set of
    arguments, as plain arrays (no pickle).
    """
    if padding[0] > padding[1]:
        raise ConfigError(f"data.args.padding must be [low, high] with low <= high, got {list(padding)}")
    args = dict(num_samples=num_samples, train_split=train_split, template_len=template_len, padding=list(padding),
                scale_coeff=scale_coeff, max_translation=max_translation, corr_noise_scale=corr_noise_scale,
                iid_noise_scale=iid_noise_scale, shear_scale=shear_scale, shuffle_seq=shuffle_seq,
                final_seq_length=final_seq_length, seed=data_seed)
    digest = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(root) / "mnist1d" / f"{digest}.npz"
    if not path.is_file():
        buffer = io.BytesIO()
        np.savez(buffer, **_generate_mnist1d(args))
        write_atomic(path, buffer.getvalue())
    with np.load(path, allow_pickle=False) as arrays:
        x, y, x_test, y_test = (arrays[k] for k in ("x", "y", "x_test", "y_test"))
    return Source(_signals(x), _labels(y), _signals(x_test), _labels(y_test), num_classes=10)


def _generate_mnist1d(args):
    """x, y, x_test, y_test from mnist1d's make_dataset. It seeds numpy's and Python's global random
    generators; their states are put back afterwards, so loading the data changes no other stream."""
    import random

    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    states = np.random.get_state(), random.getstate()
    try:
        made = make_dataset(ObjectView(dict(args)))
    finally:
        np.random.set_state(states[0])
        random.setstate(states[1])
    return {key: np.asarray(made[key]) for key in ("x", "y", "x_test", "y_test")}


@DATASETS.register("synthetic")
def synthetic(*, root, download, input_shape=(1, 8, 8), num_classes=10, num_samples=1000, num_test=500,
              class_sep=4.0, data_seed=0):
    """Gaussian classes for tests: x = class_sep * mu_y + e with mu_k ~ N(0, I/D), e ~ N(0, I).

    D = C*H*W, so class means sit about class_sep * sqrt(2) noise deviations apart whatever the shape.
    Labels are balanced; everything is drawn from data_seed (not the trial seed), so the test set is
    the same for every trial.
    """
    values = (num_samples + num_test) * math.prod(input_shape)
    if values > MAX_SYNTHETIC_VALUES:
        raise ConfigError(f"data.args: synthetic data of (num_samples + num_test) x input_shape = {values:,} values; at most "
                          f"{MAX_SYNTHETIC_VALUES:,} (1 GiB of float32): lower data.args.num_samples, num_test or input_shape")
    if min(num_samples, num_test) < num_classes:
        raise ConfigError(
            f"data.args.num_samples and data.args.num_test must be >= data.args.num_classes, "
            f"got {num_classes}, {num_samples}, {num_test}"
        )
    g = torch.Generator().manual_seed(data_seed)
    shape = tuple(input_shape)
    means = torch.randn(num_classes, *shape, generator=g) / np.prod(shape) ** 0.5

    def draw(n):
        y = torch.randperm(n, generator=g) % num_classes
        return class_sep * means[y] + torch.randn(n, *shape, generator=g), y

    return Source(*draw(num_samples), *draw(num_test), num_classes=num_classes)


# dataset name -> {data.args keyword: check(key, value)}: the values a factory cannot load with (type,
# range, NaN), refused by check_args before anything is loaded. Bounds sit where a larger value is a
# typo. A new dataset with arguments adds its entry here.
SEED, SAMPLES, SCALE = integer("[0, 4294967295]"), integer("[1, 1048576]"), number("[0, 1000]")
ARG_CHECKS = {
    "cifar10": {"augment": boolean},
    "cifar100": {"augment": boolean},
    "svhn": {"augment": boolean},
    "mnist1d": {"num_samples": integer("[10, 1048576]"), "train_split": number("(0, 1)"), "template_len": integer("[1, 10000]"),
                "padding": integers("[0, 10000]", length=2), "scale_coeff": SCALE, "max_translation": integer("[1, 10000]"),
                "corr_noise_scale": SCALE, "iid_noise_scale": SCALE, "shear_scale": SCALE, "shuffle_seq": boolean,
                "final_seq_length": integer("[1, 10000]"), "data_seed": SEED},
    "synthetic": {"input_shape": integers("[1, 4096]", length=3), "num_classes": integer("[2, 100000]"), "num_samples": SAMPLES,
                  "num_test": SAMPLES, "class_sep": number("[0, inf)"), "data_seed": SEED},
}
