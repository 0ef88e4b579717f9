"""Metrics: quantization against hand-computed grids, the Hessian sample, weight-noise norms, the
evaluate() keys, and bad input (the Hessian estimators: tests/test_hessian.py). Models are defined
here, tiny; `data` is a stand-in with the contract's Dataset fields."""
import types

import pytest
import torch
import torch.nn.functional as F
from exact import tiny_batch, tiny_mlp
from torch import nn

from hero_bench import metrics
from hero_bench.errors import ConfigError


def blobs(n, seed):
    """Three Gaussian blobs in 4 dimensions: (x float32 (n, 4), y int64 (n,))."""
    g = torch.Generator().manual_seed(seed)
    centers = 3.0 * torch.eye(3, 4)
    y = torch.randint(0, 3, (n,), generator=g)
    return centers[y] + torch.randn(n, 4, generator=g), y


def make_data():
    train_x, train_y_clean = blobs(300, seed=0)
    test_x, test_y = blobs(200, seed=1)
    train_y = train_y_clean.clone()
    train_y[:30] = (train_y[:30] + 1) % 3  # label noise: train_y differs from train_y_clean
    val_x, val_y = blobs(50, seed=2)
    return types.SimpleNamespace(
        name="blobs", num_classes=3, input_shape=(4,), train_x=train_x, train_y=train_y,
        train_y_clean=train_y_clean, val_x=val_x, val_y=val_y, test_x=test_x, test_y=test_y,
        augment=False, label_noise_realized=0.1,
    )


@pytest.fixture(scope="module")
def trained():
    """A 4-16-3 MLP trained to high accuracy on the blobs, and the data."""
    torch.manual_seed(0)
    data = make_data()
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    for _ in range(200):
        optimizer.zero_grad()
        F.cross_entropy(model(data.train_x), data.train_y_clean).backward()
        optimizer.step()
    return model, data


# ---------------------------------------------------------------------------------------------
# Accuracy


class ModeProbe(nn.Module):
    """Identity on 2-d logits that records whether it ran in training mode."""

    def forward(self, x):
        self.seen_training = self.training
        return x


def test_accuracy_is_percent_in_eval_mode_and_restores_train_mode():
    model = ModeProbe().train()
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert metrics.accuracy(model, logits, torch.tensor([0, 1, 1, 1]), batch_size=3) == 75.0
    assert model.seen_training is False
    assert model.training is True


# ---------------------------------------------------------------------------------------------
# Post-training quantization


def test_quantize_tensor_matches_hand_computed_grid_at_2_3_and_4_bits():
    w = torch.tensor([0.5, -1.0, 0.26, 0.74])
    # max|w| = 1, so w/s = w·(2^(b-1) - 1); ties (0.5 at 2 bits, 3.5 at 4 bits) round to even.
    assert torch.equal(metrics.quantize_tensor(w, 2), torch.tensor([0.0, -1.0, 0.0, 1.0]))
    torch.testing.assert_close(metrics.quantize_tensor(w, 3), torch.tensor([2 / 3, -1.0, 1 / 3, 2 / 3]))
    torch.testing.assert_close(metrics.quantize_tensor(w, 4), torch.tensor([4 / 7, -1.0, 2 / 7, 5 / 7]))


def test_per_channel_quantization_scales_each_output_channel_by_its_own_maximum():
    w = torch.tensor([[0.5, -1.0], [0.1, 0.02], [0.0, 0.0]])
    expected_2bit = torch.tensor([[0.0, -1.0], [0.1, 0.0], [0.0, 0.0]])
    expected_3bit = torch.tensor([[2 / 3, -1.0], [0.1, 0.1 / 3], [0.0, 0.0]])
    torch.testing.assert_close(metrics.quantize_tensor(w, 2, per_channel=True), expected_2bit)
    torch.testing.assert_close(metrics.quantize_tensor(w, 3, per_channel=True), expected_3bit)
    # Per tensor, the small channel falls below half a step (s = 1/3) and vanishes.
    torch.testing.assert_close(metrics.quantize_tensor(w, 3), torch.tensor([[2 / 3, -1.0], [0.0, 0.0], [0.0, 0.0]]))


def test_all_zero_tensor_stays_zero():
    for per_channel in (False, True):
        assert torch.equal(metrics.quantize_tensor(torch.zeros(3, 2), 4, per_channel), torch.zeros(3, 2))


def conv_bn_model():
    """(N, 1, 4, 4) -> (N, 4) through a Conv2d, BatchNorm, a Linear and a Conv1d (weights 0, 4, 6)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4), nn.Unflatten(1, (1, 4)),
        nn.Conv1d(1, 2, 3), nn.Flatten(),
    )


def test_quantize_weights_quantizes_conv_and_linear_weights_only_and_leaves_input_untouched():
    model = conv_bn_model()
    model[1].running_mean.fill_(0.3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantized = metrics.quantize_weights(model, 3)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    for key, value in quantized.state_dict().items():
        if key in ("0.weight", "4.weight", "6.weight"):
            assert torch.equal(value, metrics.quantize_tensor(before[key], 3))
            assert len(value.unique()) <= 7  # 2^3 - 1 levels
        else:  # biases and every BatchNorm parameter and buffer
            assert torch.equal(value, before[key])


def test_16_bit_quantization_changes_accuracy_by_at_most_0_1_points(trained):
    model, data = trained
    clean = metrics.accuracy(model, data.test_x, data.test_y)
    assert clean > 90
    result = metrics.ptq_accuracy(model, data, [16, 2])
    assert abs(result["ptq_acc_16bit"] - clean) <= 0.1
    assert result["ptq_acc_2bit"] < clean  # 2 bits does hurt: the check above is not vacuous


def test_per_channel_error_is_at_most_per_tensor_error_on_uneven_channels():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 16, generator=g) * torch.tensor([[1.0], [0.01], [100.0], [0.3]])
    for bits in range(2, 9):
        per_tensor = metrics.quantize_tensor(w, bits) - w
        per_channel = metrics.quantize_tensor(w, bits, per_channel=True) - w
        assert per_channel.norm() <= per_tensor.norm()
    # The small channels get their own fine grid: far smaller error than under the large channel's scale.
    assert per_channel[1].norm() < 0.01 * per_tensor[1].norm()


def test_ptq_accuracy_names_per_channel_keys(trained):
    model, data = trained
    assert set(metrics.ptq_accuracy(model, data, [8, 4], per_channel=True)) == {
        "ptq_acc_8bit_per_channel", "ptq_acc_4bit_per_channel"
    }


# ---------------------------------------------------------------------------------------------
# Hessian sample (the estimators: tests/test_hessian.py)


def test_hessian_sample_is_fixed_by_the_seed_and_uses_the_training_labels():
    data = make_data()
    batches = metrics.hessian_sample(data, samples=50, batch_size=16, seed=3)
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    again = metrics.hessian_sample(data, samples=50, batch_size=16, seed=3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    other = metrics.hessian_sample(data, samples=50, batch_size=16, seed=4)
    assert not torch.equal(batches[0][0], other[0][0])
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    index = (x[:, None, :] == data.train_x[None]).all(dim=2).float().argmax(dim=1)
    assert torch.equal(y, data.train_y[index])
    assert len(metrics.hessian_sample(data, samples=10_000, batch_size=256, seed=0)[0][1]) == 256


# ---------------------------------------------------------------------------------------------
# Weight noise


def test_perturbed_weights_have_noise_of_norm_sigma_times_the_layer_norm():
    model = conv_bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    noisy = metrics.perturb_weights(model, 0.1, generator)
    second = metrics.perturb_weights(model, 0.1, generator)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for key, value in noisy.state_dict().items():
        if key in ("0.weight", "4.weight", "6.weight"):
            noise = value - before[key]
            assert noise.norm().item() == pytest.approx(0.1 * before[key].norm().item(), rel=1e-5)
            assert not torch.equal(second.state_dict()[key], value)  # a fresh draw each call
        else:
            assert torch.equal(value, before[key])


def test_weight_noise_with_sigma_zero_gives_the_clean_accuracy_exactly(trained):
    model, data = trained
    result = metrics.weight_noise_accuracy(model, data, [0.0, 0.5], draws=3)
    assert result["weight_noise_acc_0"] == metrics.accuracy(model, data.test_x, data.test_y)
    assert result["weight_noise_acc_0.5"] < result["weight_noise_acc_0"]
    alone = metrics.weight_noise_accuracy(model, data, [0.5], draws=3)
    assert alone == {"weight_noise_acc_0.5": result["weight_noise_acc_0.5"]}  # independent of the other sigmas


# ---------------------------------------------------------------------------------------------
# evaluate()

SMALL_CFG = {
    "ptq_bits": [8, 2],
    "ptq_per_channel": True,
    "hessian": {"samples": 64, "probes": 4, "batch_size": 32, "max_iter": 20},
    "weight_noise": {"sigmas": [0.0, 0.05], "draws": 2},
}


def test_evaluate_reports_every_enabled_metric_and_is_reproducible(trained):
    model, data = trained
    result = metrics.evaluate(model, data, SMALL_CFG, seed=0)
    assert set(result) == {
        "ptq_acc_8bit", "ptq_acc_2bit", "ptq_acc_8bit_per_channel", "ptq_acc_2bit_per_channel",
        "ptq_drop_8bit", "ptq_drop_2bit", "ptq_drop_8bit_per_channel", "ptq_drop_2bit_per_channel",
        "hessian_top_eig", "hessian_trace", "weight_noise_acc_0", "weight_noise_acc_0.05",
    }
    float_accuracy = metrics.accuracy(model, data.test_x, data.test_y)
    for suffix in ("8bit", "2bit", "8bit_per_channel", "2bit_per_channel"):
        assert result[f"ptq_drop_{suffix}"] == pytest.approx(float_accuracy - result[f"ptq_acc_{suffix}"])
    assert metrics.evaluate(model, data, SMALL_CFG, seed=0) == result
    # The Hessian is the mean cross-entropy's on the seed's sample with the training labels.
    batches = metrics.hessian_sample(data, samples=64, batch_size=64, seed=0)
    top = metrics.hessian_top_eigenvalue(model, F.cross_entropy, batches, max_iter=20)
    assert result["hessian_top_eig"] == pytest.approx(top, rel=1e-4)
    assert result["hessian_top_eig"] > 0
    assert set(metrics.METRICS.names()) == {"ptq", "hessian", "weight_noise"}


def test_evaluate_reports_nothing_for_disabled_sections(trained):
    model, data = trained
    cfg = {"ptq_bits": [], "hessian": {"top_eigenvalue": False, "trace": False}, "weight_noise": {"sigmas": []}}
    assert metrics.evaluate(model, data, cfg, seed=0) == {}


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("bits", [1, 17])
def test_bits_outside_2_to_16_are_rejected(bits):
    with pytest.raises(ConfigError, match="evaluate.ptq_bits"):
        metrics.quantize_weights(tiny_mlp(), bits)


@pytest.mark.parametrize(
    "cfg, field",
    [
        ({"ptq_bits": [8, 1]}, "evaluate.ptq_bits"),
        ({"weight_noise": {"sigmas": [-0.1]}}, "evaluate.weight_noise.sigmas"),
        ({"weight_noise": {"draws": 0}}, "evaluate.weight_noise.draws"),
        ({"hessian": {"probes": 0}}, "evaluate.hessian.probes"),
        ({"hessian": {"samples": 0}}, "evaluate.hessian.samples"),
        ({"hessian": {"tol": 0.0}}, "evaluate.hessian.tol"),
    ],
)
def test_evaluate_rejects_bad_values_naming_the_field(trained, cfg, field):
    model, data = trained
    with pytest.raises(ConfigError, match=field):
        metrics.evaluate(model, data, cfg, seed=0)


def test_hessian_functions_reject_zero_probes_and_empty_batch_lists():
    model = tiny_mlp()
    with pytest.raises(ConfigError, match="evaluate.hessian.probes"):
        metrics.hessian_trace(model, F.cross_entropy, [tiny_batch()], probes=0)
    for function in (metrics.hessian_top_eigenvalue, metrics.hessian_trace):
        with pytest.raises(ConfigError, match="at least one batch"):
            function(model, F.cross_entropy, [])


def test_weight_noise_rejects_negative_sigma_and_zero_draws(trained):
    model, data = trained
    with pytest.raises(ConfigError, match="evaluate.weight_noise.sigmas"):
        metrics.weight_noise_accuracy(model, data, [-0.01], draws=1)
    with pytest.raises(ConfigError, match="evaluate.weight_noise.draws"):
        metrics.weight_noise_accuracy(model, data, [0.01], draws=0)
