"""Data: seeded stratified splits, label noise, torchvision formats, batch augmentation."""
import hashlib
import inspect
import pickle
import socket
import struct

import numpy as np
import pytest
import scipy.io
import scipy.stats
import torch
import torchvision.datasets as tvd

from hero_bench import config, data
from hero_bench.errors import ConfigError, DatasetNotFoundError


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def synthetic(**kwargs):
    args = dict(num_samples=400, num_test=100, input_shape=(1, 4, 4), num_classes=4)
    return data.load("synthetic", **{**args, **kwargs})


# ---------------------------------------------------------------- splits and label noise


def test_stratified_split_holds_out_the_fraction_of_every_class():
    labels = np.repeat([0, 1, 2], [100, 50, 30])
    kept, held = data.stratified_split(labels, 0.1, np.random.default_rng(0))
    assert np.bincount(labels[held]).tolist() == [10, 5, 3]
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(180))


def test_stratified_split_of_tiny_classes_still_holds_out_the_rounded_total():
    labels = np.arange(12)  # twelve classes of one sample each: per-class rounding would hold out none
    kept, held = data.stratified_split(labels, 0.3, np.random.default_rng(0))
    assert len(held) == 4 and len(kept) == 8


def test_validation_split_of_digits_is_stratified():
    ds = data.load("digits", seed=0, val_fraction=0.1)
    val_counts = torch.bincount(ds.val_y, minlength=10)
    pool_counts = val_counts + torch.bincount(ds.train_y_clean, minlength=10)
    assert torch.all((val_counts - 0.1 * pool_counts).abs() < 1)
    assert val_counts.sum() == round(0.1 * pool_counts.sum().item())
    assert len(ds.val_y) + len(ds.train_y) + len(ds.test_y) == 1797


def test_split_and_noise_are_pure_functions_of_the_seed():
    a, b, c = synthetic(seed=3, label_noise=0.5), synthetic(seed=3, label_noise=0.5), synthetic(seed=4, label_noise=0.5)
    for field in ("train_x", "train_y", "train_y_clean", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.val_x, c.val_x)
    assert not torch.equal(a.train_y != a.train_y_clean, c.train_y != c.train_y_clean)
    assert torch.equal(a.test_x, c.test_x)  # the test set never depends on the trial seed


def test_label_noise_does_not_move_the_split():
    clean, noisy = synthetic(seed=5), synthetic(seed=5, label_noise=0.6)
    assert torch.equal(clean.train_x, noisy.train_x)
    assert torch.equal(clean.train_y, noisy.train_y_clean)
    assert torch.equal(clean.val_y, noisy.val_y)


def test_realized_label_noise_is_about_p_times_k_minus_1_over_k():
    p, k = 0.8, 10
    ds = data.load("digits", seed=1, label_noise=p)
    wrong = (ds.train_y != ds.train_y_clean).float().mean().item()
    assert ds.label_noise_realized == pytest.approx(wrong)
    # binomial std of the realized fraction is about 0.008 here
    assert abs(ds.label_noise_realized - p * (k - 1) / k) < 0.03
    assert data.load("digits", seed=1).label_noise_realized == 0.0


def test_validation_and_test_labels_stay_clean_under_label_noise():
    clean, noisy = data.load("digits", seed=2), data.load("digits", seed=2, label_noise=0.9)
    assert torch.equal(clean.val_y, noisy.val_y)
    assert torch.equal(clean.test_y, noisy.test_y)
    assert torch.equal(clean.train_y, noisy.train_y_clean)
    assert not torch.equal(noisy.train_y, noisy.train_y_clean)


def test_uniform_noise_keeps_a_chosen_label_about_one_time_in_k():
    labels, k = np.arange(20_000) % 10, 10
    noisy = data.noisy_labels(labels, 1.0, k, np.random.default_rng(0), "uniform")
    kept = int((noisy == labels).sum())
    assert scipy.stats.binomtest(kept, len(labels), 1 / k).pvalue > 0.01  # consistent with 1/K
    assert set(np.unique(noisy)) == set(range(k))


def test_flip_noise_never_keeps_a_chosen_label_and_spreads_it_evenly_over_the_others():
    labels, k = np.arange(20_000) % 10, 10
    rng = np.random.default_rng(0)
    noisy = data.noisy_labels(labels, 0.3, k, rng, "flip")
    assert (noisy != labels).sum() == 6_000  # exactly the chosen fraction is wrong
    everything = data.noisy_labels(labels, 1.0, k, np.random.default_rng(1), "flip")
    assert not (everything == labels).any()
    offsets = np.bincount((everything - labels) % k, minlength=k)
    assert offsets[0] == 0 and scipy.stats.chisquare(offsets[1:]).pvalue > 0.01  # uniform over the K-1 others


def test_realized_flip_noise_is_p_and_validation_stays_clean():
    ds = data.load("digits", seed=3, label_noise=0.8, label_noise_kind="flip")
    assert ds.label_noise_realized == pytest.approx(0.8, abs=1 / len(ds.train_y))
    assert torch.equal(ds.val_y, data.load("digits", seed=3).val_y)


# ---------------------------------------------------------------- MNIST-1D


def test_mnist1d_is_the_published_4000_1000_split_of_40_sample_signals(tmp_path):
    ds = data.load("mnist1d", root=tmp_path, seed=0)
    assert ds.input_shape == (1, 40) and ds.num_classes == 10
    assert (len(ds.train_y) + len(ds.val_y), len(ds.test_y)) == (4000, 1000)
    assert ds.train_x.shape == (3600, 1, 40) and ds.val_x.shape == (400, 1, 40) and ds.test_x.shape == (1000, 1, 40)
    # the generator standardizes the whole set; the training split stays close to mean 0, std 1
    assert abs(ds.train_x.mean().item()) < 0.05 and abs(ds.train_x.std().item() - 1) < 0.05
    per_class = torch.bincount(torch.cat([ds.train_y_clean, ds.val_y]))
    assert (torch.bincount(ds.val_y) - 0.1 * per_class).abs().max() < 1  # stratified: 10% of every class


def test_mnist1d_defaults_are_the_generators_published_arguments():
    from mnist1d.data import get_dataset_args

    published = get_dataset_args(as_dict=True)
    published.pop("url")
    published["data_seed"] = published.pop("seed")
    defaults = {name: p.default for name, p in inspect.signature(data.mnist1d).parameters.items()
                if name not in data.FACTORY_ARGS}
    defaults["padding"] = list(defaults["padding"])
    assert defaults == published


def test_mnist1d_is_generated_without_the_network_and_cached_per_argument_set(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("MNIST-1D must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    calls = []
    generate = data._generate_mnist1d
    monkeypatch.setattr(data, "_generate_mnist1d", lambda args: calls.append(args) or generate(args))
    first = data.mnist1d(root=tmp_path, download=False, num_samples=1000)
    again = data.mnist1d(root=tmp_path, download=False, num_samples=1000)
    assert len(calls) == 1 and len(list((tmp_path / "mnist1d").glob("*.npz"))) == 1  # the second load hit the cache
    assert torch.equal(first.train_x, again.train_x) and torch.equal(first.test_y, again.test_y)
    elsewhere = data.mnist1d(root=tmp_path / "other", download=False, num_samples=1000)
    assert torch.equal(first.train_x, elsewhere.train_x)  # same arguments, same arrays
    other_seed = data.mnist1d(root=tmp_path, download=False, num_samples=1000, data_seed=1)
    assert len(calls) == 3 and not torch.equal(first.train_x, other_seed.train_x)
    assert first.train_x.shape == (800, 1, 40) and first.test_x.shape == (200, 1, 40)


def test_generating_mnist1d_leaves_numpys_global_random_state_alone(tmp_path):
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    data.mnist1d(root=tmp_path, download=False, num_samples=200)
    assert np.random.random() == expected


def test_digits_are_normalized_1x8x8_images_with_a_seed_independent_test_set():
    a, b = data.load("digits", seed=0), data.load("digits", seed=7)
    assert a.input_shape == (1, 8, 8) and a.train_x.dtype == torch.float32 and a.train_y.dtype == torch.int64
    assert torch.equal(a.test_x, b.test_x) and len(a.test_y) == 359
    pool = torch.cat([a.train_x, a.val_x])
    assert abs(pool.mean().item()) < 1e-4 and abs(pool.std().item() - 1) < 1e-3
    pixels = (a.test_x * a.std[0] + a.mean[0]) * 16  # back to the 0..16 integer scale
    assert torch.allclose(pixels, pixels.round(), atol=1e-4)


def test_consecutive_trials_on_the_same_data_read_it_once_and_get_tensors_of_their_own(monkeypatch):
    reads = []
    factory = data.DATASETS.get("synthetic")
    monkeypatch.setitem(data.DATASETS._factories, "synthetic", lambda **kw: reads.append(kw) or factory(**kw))
    monkeypatch.setattr(data, "_last_source", {})
    first, again = synthetic(seed=0), synthetic(seed=0)
    assert len(reads) == 1  # the second trial reused the source
    for name in ("train_x", "train_y", "train_y_clean", "val_x", "val_y", "test_x", "test_y"):
        mine, theirs = getattr(first, name), getattr(again, name)
        assert torch.equal(mine, theirs) and mine.data_ptr() != theirs.data_ptr(), name
    assert first.mean == again.mean and first.std == again.std
    first.test_y[:] = -1  # a trial writing its own tensors leaves the next trial's data alone
    assert torch.equal(synthetic(seed=0).test_y, again.test_y)
    synthetic(seed=0, num_test=120)  # other arguments: read again, and only that one is kept
    synthetic(seed=0)
    assert len(reads) == 3


def test_synthetic_data_is_learnable_by_nearest_class_mean():
    ds = data.load("synthetic", num_samples=2000, num_test=500, input_shape=(3, 8, 8), num_classes=5, class_sep=4.0)
    means = torch.stack([ds.train_x[ds.train_y == k].mean(0) for k in range(5)]).flatten(1)
    predicted = torch.cdist(ds.test_x.flatten(1), means).argmin(1)
    assert (predicted == ds.test_y).float().mean() > 0.9
    assert ds.input_shape == (3, 8, 8)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(val_fraction=0.0), "data.val_fraction"),
        (dict(val_fraction=1.0), "data.val_fraction"),
        (dict(label_noise=1.0), "data.label_noise"),
        (dict(label_noise=-0.1), "data.label_noise"),
        (dict(nonsense=3), "data.args.nonsense"),
    ],
)
def test_bad_arguments_raise_config_error_naming_the_field(kwargs, field):
    # the experiment schema is the door: data.load trusts its values and checks only data.args
    with pytest.raises(ConfigError, match=field):
        known = {k: v for k, v in kwargs.items() if k != "nonsense"}
        config.from_dict({"data": {"name": "digits", **known, "args": {k: v for k, v in kwargs.items() if k == "nonsense"}}})
    if "nonsense" in kwargs:
        with pytest.raises(ConfigError, match=field):
            data.load("digits", **kwargs)


def test_unknown_dataset_lists_the_known_names():
    with pytest.raises(ConfigError, match="known: cifar10, cifar100, digits"):
        data.load("imagenet")


# ---------------------------------------------------------------- batches


def test_train_batches_cover_the_training_set_once_and_keep_the_last_partial_batch():
    ds = synthetic()
    batches = list(ds.train_batches(64, torch.Generator().manual_seed(0)))
    assert [len(y) for _, y in batches] == [64] * (len(ds.train_y) // 64) + [len(ds.train_y) % 64]
    seen = torch.cat([x for x, _ in batches]).flatten(1)
    order = seen[:, 0].argsort()  # first pixels are continuous draws, hence distinct
    expected = ds.train_x.flatten(1)
    assert torch.equal(seen[order], expected[expected[:, 0].argsort()])
    assert torch.equal(torch.cat([y for _, y in batches])[order], ds.train_y[expected[:, 0].argsort()])
    again = list(ds.train_batches(64, torch.Generator().manual_seed(0)))
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(batches, again))


# ---------------------------------------------------------------- augmentation


def test_crop_flip_of_a_small_image_matches_the_hand_result():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # one 1x2x2 image, padded by 1 with -9
    fill = torch.tensor([-9.0])
    crop = data.crop_flip(x, torch.tensor([0]), torch.tensor([1]), torch.tensor([False]), 1, fill)
    flipped = data.crop_flip(x, torch.tensor([0]), torch.tensor([1]), torch.tensor([True]), 1, fill)
    assert crop.tolist() == [[[[-9.0, -9.0], [1.0, 2.0]]]]
    assert flipped.tolist() == [[[[-9.0, -9.0], [2.0, 1.0]]]]


def test_crop_flip_matches_pixel_by_pixel_reference():
    n, c, h, w, pad = 3, 2, 5, 6, 2
    x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(0))
    fill = torch.tensor([-1.5, 7.0])
    top, left, flip = torch.tensor([0, 4, 2]), torch.tensor([3, 0, 4]), torch.tensor([True, False, True])
    out = data.crop_flip(x, top, left, flip, pad, fill)
    expected = torch.empty_like(x)
    for k in range(n):
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    jj = w - 1 - j if flip[k] else j
                    r, s = top[k] + i - pad, left[k] + jj - pad  # position in the unpadded image
                    inside = 0 <= r < h and 0 <= s < w
                    expected[k, ch, i, j] = x[k, ch, r, s] if inside else fill[ch]
    assert torch.equal(out, expected)


def test_random_crop_flip_preserves_shape_is_random_and_seeded():
    x = torch.randn(256, 3, 32, 32)
    fill = torch.zeros(3)
    one = data.random_crop_flip(x, torch.Generator().manual_seed(0), 4, True, fill)
    same = data.random_crop_flip(x, torch.Generator().manual_seed(0), 4, True, fill)
    other = data.random_crop_flip(x, torch.Generator().manual_seed(1), 4, True, fill)
    assert one.shape == x.shape
    assert torch.equal(one, same) and not torch.equal(one, other)
    unchanged = (one == x).flatten(1).all(1).float().mean()
    assert unchanged < 0.05  # identity happens with probability 1/162 per image
    flipped = (one == x.flip(3)).flatten(1).all(1).float().mean()
    assert flipped < 0.05


def test_augmented_training_batches_differ_between_epochs():
    ds = synthetic(input_shape=(3, 8, 8))
    ds.augment, ds.flip = True, True
    g = torch.Generator().manual_seed(0)
    first, second = next(ds.train_batches(400, g)), next(ds.train_batches(400, g))
    assert first[0].shape == (len(ds.train_y), 3, 8, 8)
    assert not torch.equal(first[0].sum(0), second[0].sum(0))
    # padding is black in pixel space, as with torchvision's RandomCrop before Normalize
    pixels = first[0] * torch.tensor(ds.std).view(1, 3, 1, 1) + torch.tensor(ds.mean).view(1, 3, 1, 1)
    assert (pixels[:, :, 0, 0].abs() < 1e-6).float().mean() > 0.2  # corner padded unless offset is large


# ---------------------------------------------------------------- torchvision formats


def write_cifar(root, cls, label_key, names_key, num_classes, rng, per_file=12):
    """Write a tiny CIFAR in torchvision's python-pickle layout; returns the data and md5 lists."""
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    written = {}
    for name, _ in cls.train_list + cls.test_list:
        images = rng.integers(0, 256, (per_file, 3 * 32 * 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, num_classes, per_file)]
        (folder / name).write_bytes(pickle.dumps({"data": images, label_key: labels}))
        written[name] = (images, labels)
    (folder / cls.meta["filename"]).write_bytes(pickle.dumps({names_key: [f"c{k}" for k in range(num_classes)]}))
    md5s = {
        "train_list": [[name, md5(folder / name)] for name, _ in cls.train_list],
        "test_list": [[name, md5(folder / name)] for name, _ in cls.test_list],
        "meta": {**cls.meta, "md5": md5(folder / cls.meta["filename"])},
    }
    return written, md5s


@pytest.mark.parametrize(
    "name, cls, label_key, names_key, num_classes",
    [
        ("cifar10", tvd.CIFAR10, "labels", "label_names", 10),
        ("cifar100", tvd.CIFAR100, "fine_labels", "fine_label_names", 100),
    ],
)
def test_cifar_is_read_through_torchvision_from_pickle_batches(tmp_path, monkeypatch, name, cls, label_key, names_key, num_classes):
    written, md5s = write_cifar(tmp_path, cls, label_key, names_key, num_classes, np.random.default_rng(0))
    for attr, value in md5s.items():  # torchvision verifies every file's md5 against these lists
        monkeypatch.setattr(cls, attr, value)
    ds = data.load(name, root=tmp_path, val_fraction=0.3)
    images, labels = written[cls.test_list[0][0]]
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == num_classes
    assert ds.test_y.tolist() == labels
    # a row holds the red, green then blue planes, each row-major 32x32
    n, c, r, s = 5, 2, 7, 30
    pixel = ds.test_x[n, c, r, s] * ds.std[c] + ds.mean[c]
    assert pixel.item() == pytest.approx(images[n, c * 1024 + r * 32 + s] / 255, abs=1e-6)
    assert ds.augment and ds.flip


def write_idx(path, array):
    """IDX format: magic 0x0000 0x08 (uint8) ndim, then big-endian uint32 sizes, then the bytes."""
    path.write_bytes(struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_is_read_through_torchvision_from_idx_files(tmp_path, name, folder):
    rng = np.random.default_rng(0)
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for split, n in (("train", 50), ("t10k", 20)):
        arrays[split] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(raw / f"{split}-images-idx3-ubyte", arrays[split][0])
        write_idx(raw / f"{split}-labels-idx1-ubyte", arrays[split][1])
    ds = data.load(name, root=tmp_path, val_fraction=0.2)
    images, labels = arrays["t10k"]
    assert ds.input_shape == (1, 28, 28)
    assert ds.test_y.tolist() == labels.tolist()
    restored = ds.test_x[:, 0] * ds.std[0] + ds.mean[0]
    assert torch.allclose(restored, torch.from_numpy(images).float() / 255, atol=1e-6)
    assert len(ds.train_y) + len(ds.val_y) == 50 and not ds.augment


def test_svhn_is_read_through_torchvision_from_mat_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    split_list = {}
    arrays = {}
    for split, n in (("train", 40), ("test", 15)):
        images = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # SVHN stores H, W, C, N
        labels = rng.integers(1, 11, (n, 1), dtype=np.uint8)  # digit 0 is stored as 10
        path = tmp_path / f"{split}_32x32.mat"
        scipy.io.savemat(path, {"X": images, "y": labels})
        arrays[split] = images, labels
        split_list[split] = [tvd.SVHN.split_list[split][0], path.name, md5(path)]
    monkeypatch.setattr(tvd.SVHN, "split_list", split_list)
    ds = data.load("svhn", root=tmp_path, val_fraction=0.25)
    images, labels = arrays["test"]
    assert ds.test_y.tolist() == [int(v) % 10 for v in labels[:, 0]]
    n, c, r, s = 3, 1, 4, 9
    pixel = ds.test_x[n, c, r, s] * ds.std[c] + ds.mean[c]
    assert pixel.item() == pytest.approx(images[r, s, c, n] / 255, abs=1e-6)
    assert ds.augment and not ds.flip  # crops only: a mirrored digit is another symbol


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100", "svhn"])
def test_missing_files_without_download_raise_dataset_not_found_naming_the_path(tmp_path, name):
    with pytest.raises(DatasetNotFoundError) as error:
        data.load(name, root=tmp_path / "empty", download=False)
    message = str(error.value)
    assert str(tmp_path / "empty") in message and "data.download: true" in message and "\n" not in message
