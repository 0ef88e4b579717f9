"""End-of-training evaluation: accuracy, post-training quantization, Hessian curvature, weight noise.

Every evaluator in `METRICS` has the signature `fn(model, data, evaluate, seed) -> dict`, where
`evaluate` is the experiment's `evaluate:` section (a validated EvaluateConfig), and returns the
metric keys of docs/metrics.md for the part of that section it owns; `evaluate` runs them all.
Accuracies are percentages. Only the Dataset fields train_x, train_y, test_x, test_y are used.
The public functions (quantize_weights, ptq_accuracy, weight_noise_accuracy and the Hessian
estimators of hero_bench.hessian, re-exported here) check their own arguments.
"""
import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from hero_bench import catalog
from hero_bench.config import EvaluateConfig, from_dict
from hero_bench.errors import ConfigError, HeroBenchWarning
from hero_bench.hessian import (  # noqa: F401
    hessian_curvature, hessian_density, hessian_sample, hessian_top_eigenvalue, hessian_top_k, hessian_trace,
)
from hero_bench.models import eval_mode
from hero_bench.registry import Registry, call_problem

EVALUATOR_ARGS = ("model", "data", "evaluate", "seed")  # how `evaluate` calls every evaluator, by position
METRICS = Registry("metric", check=lambda evaluator: call_problem(evaluator, args=EVALUATOR_ARGS))
_UNDECLARED_WARNED = set()  # evaluators whose undeclared keys this process has warned about

# Layers whose weights are quantized and perturbed; biases and normalization layers stay untouched.
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def accuracy(model, x, y, batch_size=1024):
    """Percent of rows of `x` whose argmax prediction equals `y`; eval mode, no gradients."""
    if len(y) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    correct = 0
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(y), batch_size):
            logits = model(x[start : start + batch_size])
            correct += (logits.argmax(dim=1) == y[start : start + batch_size]).sum().item()
    return 100.0 * correct / len(y)


def weight_layers(model):
    return [module for module in model.modules() if isinstance(module, WEIGHT_LAYERS)]


# ---------------------------------------------------------------------------------------------
# Post-training quantization


def _check_bits(bits):
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ConfigError(f"evaluate.ptq_bits must be integers in [2, 16], got {bits!r}")


def quantize_tensor(w, bits, per_channel=False):
    """Symmetric uniform round-to-nearest: q(w) = s·round(w/s), s = max|w| / (2^(bits-1) − 1).

    The maximum is over the whole tensor, or over each output channel (dim 0) when `per_channel`.
    Ties round to even (torch.round). An all-zero tensor or channel (s = 0) stays zero.
    """
    levels = 2 ** (bits - 1) - 1
    if per_channel:
        max_abs = w.abs().reshape(len(w), -1).amax(dim=1).reshape(-1, *[1] * (w.dim() - 1))
    else:
        max_abs = w.abs().max()
    # w·(levels/max|w|) rather than w/s: exact on the grid points, so 0.5 at 3 bits is the tie 1.5.
    safe_max = torch.where(max_abs > 0, max_abs, torch.ones_like(max_abs))
    return torch.round(w * (levels / safe_max)) * (safe_max / levels)


def quantize_weights(model, bits, per_channel=False):
    """A deep copy of `model` with every Conv/Linear weight quantized to `bits`; `model` is untouched."""
    _check_bits(bits)
    quantized = copy.deepcopy(model)
    with torch.no_grad():
        for layer in weight_layers(quantized):
            layer.weight.copy_(quantize_tensor(layer.weight, bits, per_channel))
    return quantized


def ptq_accuracy(model, data, bits_list, per_channel=False):
    """{"ptq_acc_{b}bit" (+ "_per_channel"): test accuracy of the b-bit quantized model}."""
    for bits in bits_list:
        _check_bits(bits)
    key = catalog.PTQ_ACC_PER_CHANNEL if per_channel else catalog.PTQ_ACC
    return {key.key(bits): accuracy(quantize_weights(model, bits, per_channel), data.test_x, data.test_y)
            for bits in bits_list}


# ---------------------------------------------------------------------------------------------
# Weight noise


def perturb_weights(model, sigma, generator):
    """A deep copy of `model` with W ← W + σ‖W‖·e/‖e‖, e ~ N(0, I), for every Conv/Linear weight W.

    The noise of each layer is Gaussian in direction and has norm exactly σ‖W‖ ("per-layer norm
    σ‖W_layer‖"); σ = 0 gives the model back unchanged. `e` is drawn on the CPU with `generator`
    (layer by layer, in module order) so a seed means the same on any device. `model` is untouched.
    """
    noisy = copy.deepcopy(model)
    with torch.no_grad():
        for layer in weight_layers(noisy):
            w = layer.weight
            e = torch.randn(w.shape, generator=generator, dtype=torch.float64)
            scale = sigma * w.norm().item() / max(e.norm().item(), 1e-12)
            w.add_((e * scale).to(device=w.device, dtype=w.dtype))
    return noisy


def weight_noise_accuracy(model, data, sigmas, draws, seed=0):
    """{"weight_noise_acc_{σ:g}": mean test accuracy over `draws` noisy copies (see perturb_weights)}.

    Every σ restarts the generator at `seed`, so all σ share the same noise directions (the accuracy
    vs σ curve is smooth in σ) and a σ's value does not depend on the other σ in the list.
    """
    for sigma in sigmas:
        if not sigma >= 0:
            raise ConfigError(f"evaluate.weight_noise.sigmas must be >= 0, got {sigma!r}")
    if draws < 1:
        raise ConfigError(f"evaluate.weight_noise.draws must be >= 1, got {draws!r}")
    results = {}
    for sigma in sigmas:
        generator = torch.Generator().manual_seed(seed)
        total = sum(accuracy(perturb_weights(model, sigma, generator), data.test_x, data.test_y) for _ in range(draws))
        results[catalog.WEIGHT_NOISE_ACC.key(sigma)] = total / draws
    return results


# ---------------------------------------------------------------------------------------------
# The end-of-training evaluators


@METRICS.register("ptq")
def evaluate_ptq(model, data, evaluate, seed):
    """ptq_acc_{b}bit for every b in evaluate.ptq_bits (and ptq_acc_{b}bit_per_channel if
    ptq_per_channel), and each one's drop ptq_drop_{b}bit[_per_channel] = float test accuracy − it."""
    variants = [(False, catalog.PTQ_ACC, catalog.PTQ_DROP)]
    if evaluate.ptq_per_channel:
        variants.append((True, catalog.PTQ_ACC_PER_CHANNEL, catalog.PTQ_DROP_PER_CHANNEL))
    results = {}
    for per_channel, _, _ in variants:
        results.update(ptq_accuracy(model, data, evaluate.ptq_bits, per_channel))
    if evaluate.ptq_bits:
        float_accuracy = accuracy(model, data.test_x, data.test_y)
        for _, acc, drop in variants:
            results.update({drop.key(bits): float_accuracy - results[acc.key(bits)] for bits in evaluate.ptq_bits})
    return results


DENSITY_KEY = catalog.HESSIAN_DENSITY.name
density_to_json, density_from_json = catalog.density_to_json, catalog.density_from_json  # the value's format


@METRICS.register("hessian")
def evaluate_hessian(model, data, evaluate, seed):
    """hessian_top_eig, hessian_trace and hessian_density (JSON text, see catalog.density_to_json) of the mean
    cross-entropy on the seed's training sample, all from one setup (hessian_curvature).

    With samples <= batch_size the gradient graph is built once and reused (about 1.6x faster per
    product); with more samples it is rebuilt batch by batch on every product.
    """
    cfg = evaluate.hessian
    if not (cfg.top_eigenvalue or cfg.trace or cfg.density):
        return {}
    batches = hessian_sample(data, cfg.samples, cfg.batch_size, seed)
    # evaluate.hessian.batch_size bounds the memory: one batch's graph is held during a product
    # anyway, so keeping it costs nothing extra; several batches' graphs would be held all at once.
    density = (cfg.density.runs, cfg.density.steps) if cfg.density else None
    values = hessian_curvature(
        model, F.cross_entropy, batches, top_eigenvalue=cfg.top_eigenvalue, trace=cfg.trace, density=density,
        tol=cfg.tol, max_iter=cfg.max_iter, probes=cfg.probes, seed=seed, keep_graph=len(batches) == 1,
    )
    keys = {"top_eigenvalue": "hessian_top_eig", "trace": "hessian_trace"}
    results = {keys[name]: value for name, value in values.items() if name in keys}
    if "density" in values:
        results[DENSITY_KEY] = density_to_json(*values["density"])
    return results


@METRICS.register("weight_noise")
def evaluate_weight_noise(model, data, evaluate, seed):
    """weight_noise_acc_{σ} for every σ in evaluate.weight_noise.sigmas."""
    return weight_noise_accuracy(model, data, evaluate.weight_noise.sigmas, evaluate.weight_noise.draws, seed)


def evaluate(model, data, evaluate_config, seed):
    """Run every registered evaluator on the trained model and merge their results.

    `evaluate_config`: an EvaluateConfig, or a mapping shaped like the `evaluate:` section (missing
    keys at their defaults, checked by the schema before any work). Each evaluator returns {} for
    what the config disables (ptq_bits: [], sigmas: [], both Hessian flags false). An evaluator's keys
    that the metric catalog does not declare are kept, with one warning per evaluator and process:
    the leaderboard and comparisons show only declared metrics.
    """
    if not isinstance(evaluate_config, EvaluateConfig):
        evaluate_config = from_dict({"evaluate": evaluate_config}).evaluate
    results = {}
    for name in METRICS.names():
        values = METRICS.get(name)(model, data, evaluate_config, seed)
        undeclared = sorted(key for key in values if catalog.describe(key) is None)
        if undeclared and name not in _UNDECLARED_WARNED:
            _UNDECLARED_WARNED.add(name)
            warnings.warn(HeroBenchWarning(
                f"metric {name!r} ({METRICS.origin(name)}) reports {', '.join(undeclared)}, which the metric catalog does not "
                "declare: trials.csv keeps them, the leaderboard and comparisons leave them out (declare them with "
                "hero_bench.catalog.declare, docs/extending.md)"), stacklevel=2)
        results.update(values)
    return results
