"""End-of-training evaluation: accuracy, post-training quantization, Hessian curvature, weight noise.

Every evaluator in `METRICS` has the signature `fn(model, data, evaluate_cfg, seed) -> dict` and
returns the keys of DESIGN.md section 3 for the parts of the `evaluate:` section it owns; `evaluate`
runs them all. Accuracies are percentages. Only the Dataset fields of the shared contract are used
(train_x, train_y, test_x, test_y).
"""
import contextlib
import copy
import dataclasses
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from hero_bench.config import EvaluateConfig
from hero_bench.errors import ConfigError
from hero_bench.registry import Registry

METRICS = Registry("metric")

# Layers whose weights are quantized and perturbed; biases and normalization layers stay untouched.
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


# ---------------------------------------------------------------------------------------------
# Accuracy


@contextlib.contextmanager
def eval_mode(model):
    """Put `model` in eval mode for the block and restore its previous train/eval mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


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
    suffix = "_per_channel" if per_channel else ""
    return {
        f"ptq_acc_{bits}bit{suffix}": accuracy(quantize_weights(model, bits, per_channel), data.test_x, data.test_y)
        for bits in bits_list
    }


# ---------------------------------------------------------------------------------------------
# Hessian of the training loss


class HessianOperator:
    """v ↦ H v, with H the Hessian of L(θ) = Σ_b (n_b/N) loss_fn(model(x_b), y_b) w.r.t. the trainable θ.

    Weighting each batch's mean loss by its share n_b/N of the N samples makes L the mean loss over
    all samples, so any split of the same samples gives the same H. Vectors are flat, in the order of
    `model.parameters()`. The caller keeps the model in eval mode while the operator is used.

    `keep_graph=True` builds the gradient ∇L with its graph (create_graph) once and differentiates
    g·v through it on every call (double backprop, retain_graph): each product then costs one
    backward pass, about 1.6x faster (ResNet-20, CPU) than rebuilding the gradient each time, at the
    memory of all batches' second-order graphs at once. `keep_graph=False` rebuilds the gradient
    batch by batch on every call, holding one batch's graph at a time.
    """

    def __init__(self, model, loss_fn, batches, keep_graph=True):
        if not batches:
            raise ConfigError("the Hessian needs at least one batch (evaluate.hessian.samples must be >= 1)")
        self.model, self.loss_fn = model, loss_fn
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.dim = sum(p.numel() for p in self.params)
        total = sum(len(targets) for _, targets in batches)
        self.batches = [(inputs, targets, len(targets) / total) for inputs, targets in batches]
        self.gradient = self._gradient(self.batches) if keep_graph else None

    def _gradient(self, batches):
        loss = sum(weight * self.loss_fn(self.model(inputs), targets) for inputs, targets, weight in batches)
        return torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True, materialize_grads=True)

    def _product(self, gradient, vectors, retain_graph):
        # A gradient entry without a graph is constant in θ: its Hessian rows are zero.
        pairs = [(g, v) for g, v in zip(gradient, vectors) if g.requires_grad]
        if not pairs:
            return [torch.zeros_like(p) for p in self.params]
        outputs, grad_outputs = zip(*pairs)
        return torch.autograd.grad(
            outputs, self.params, grad_outputs, retain_graph=retain_graph, allow_unused=True, materialize_grads=True
        )

    def __call__(self, v):
        vectors = [chunk.view_as(p) for chunk, p in zip(v.split([p.numel() for p in self.params]), self.params)]
        if self.gradient is not None:
            products = self._product(self.gradient, vectors, retain_graph=True)
        else:
            products = [torch.zeros_like(p) for p in self.params]
            for batch in self.batches:
                for total, part in zip(products, self._product(self._gradient([batch]), vectors, retain_graph=False)):
                    total += part
        return torch.cat([h.reshape(-1) for h in products])

    def random_vector(self, generator, rademacher=False):
        """A flat random vector (N(0, I), or ±1 entries) drawn on the CPU, so a seed means the same on any device."""
        p = self.params[0]
        if rademacher:
            v = torch.randint(0, 2, (self.dim,), generator=generator).mul_(2).sub_(1)
        else:
            v = torch.randn(self.dim, generator=generator, dtype=torch.float64)
        return v.to(device=p.device, dtype=p.dtype)


def _check_iteration(tol, max_iter):
    if not tol > 0:
        raise ConfigError(f"evaluate.hessian.tol must be > 0, got {tol!r}")
    if max_iter < 1:
        raise ConfigError(f"evaluate.hessian.max_iter must be >= 1, got {max_iter!r}")


def _power_iteration(hvp, v, tol, max_iter):
    """Dominant (largest-|λ|) eigenvalue of the operator: v ← Hv/‖Hv‖, λ = vᵀHv (‖v‖ = 1).

    Stops when |λ_k − λ_{k−1}| ≤ tol·|λ_k|; warns if `max_iter` products did not get there.
    """
    v = v / v.norm()
    previous = None
    for _ in range(max_iter):
        hv = hvp(v)
        eigenvalue = torch.dot(v, hv).item()
        if previous is not None and abs(eigenvalue - previous) <= tol * abs(eigenvalue):
            return eigenvalue
        norm = hv.norm()
        if norm == 0:  # v is in the null space; with a random start that means H = 0
            return eigenvalue
        v, previous = hv / norm, eigenvalue
    warnings.warn(f"Hessian power iteration stopped at max_iter={max_iter} before relative change {tol:g}")
    return eigenvalue


def hessian_top_eigenvalue(model, loss_fn, batches, *, tol=1e-3, max_iter=100, seed=0, keep_graph=True):
    """Largest eigenvalue λ_max of the Hessian of the mean loss over all samples in `batches`, each
    batch's mean loss weighted by its size (see HessianOperator), w.r.t. all trainable parameters.

    Power iteration on Hessian-vector products (double backprop), from a N(0, I) start drawn with
    `seed`, until the relative change of the estimate is at most `tol`. Power iteration converges to
    the eigenvalue of largest magnitude; if that one is negative (λ_min < −λ_max, e.g. at a saddle),
    a second power iteration on the shifted H − λ_min·I, whose eigenvalues λ − λ_min ≥ 0 are led by
    λ_max − λ_min, gives λ_max. That second run's tolerance is relative to λ_max − λ_min.

    The model is in eval mode during the computation (its mode is restored after): BatchNorm then
    normalizes with its running statistics and dropout is off, so H is the Hessian of one fixed
    function of the weights, the same however the samples are split into batches.
    `batches`: a list of (inputs, targets); `loss_fn(outputs, targets)` returns the batch-mean loss.
    `keep_graph`: reuse the gradient graph across products (faster, more memory; see HessianOperator).
    """
    _check_iteration(tol, max_iter)
    generator = torch.Generator().manual_seed(seed)
    with eval_mode(model):
        hvp = HessianOperator(model, loss_fn, batches, keep_graph)
        eigenvalue = _power_iteration(hvp, hvp.random_vector(generator), tol, max_iter)
        if eigenvalue < 0:
            shift = eigenvalue
            spread = _power_iteration(lambda v: hvp(v) - shift * v, hvp.random_vector(generator), tol, max_iter)
            eigenvalue = spread + shift
    return eigenvalue


def hessian_trace(model, loss_fn, batches, *, probes=32, seed=0, keep_graph=True):
    """Hutchinson estimate tr(H) ≈ (1/m) Σ_i z_iᵀ H z_i over m = `probes` Rademacher vectors z_i.

    Unbiased; its variance is 2 Σ_{i≠j} H_ij² / m. Same H, batches and eval mode as
    `hessian_top_eigenvalue`; the probes are drawn with `seed`.
    """
    if probes < 1:
        raise ConfigError(f"evaluate.hessian.probes must be >= 1, got {probes!r}")
    generator = torch.Generator().manual_seed(seed)
    with eval_mode(model):
        hvp = HessianOperator(model, loss_fn, batches, keep_graph)
        total = 0.0
        for _ in range(probes):
            z = hvp.random_vector(generator, rademacher=True)
            total += torch.dot(z, hvp(z)).item()
    return total / probes


def hessian_top_k(model, loss_fn, batches, k, *, tol=1e-3, max_iter=100, seed=0, keep_graph=True):
    """The k largest (algebraic) Hessian eigenvalues, in descending order, by Lanczos.

    Lanczos builds an orthonormal basis Q_j of the Krylov space span{v, Hv, …, H^(j−1) v} (fully
    re-orthogonalized, so it stores j flat vectors) and the tridiagonal T_j = Q_jᵀ H Q_j; the
    eigenvalues θ of T_j (Ritz values) approach H's extreme eigenvalues far faster than power
    iteration. Each Ritz pair (θ, y) has residual ‖Hy − θy‖ = β_j·|s_j| (s the eigenvector of T_j),
    which bounds |θ − λ|; it stops when every one of the top k has residual ≤ tol·|θ|, or after
    `max_iter` products. Same H, batches and eval mode as `hessian_top_eigenvalue`.
    """
    _check_iteration(tol, max_iter)
    generator = torch.Generator().manual_seed(seed)
    with eval_mode(model):
        hvp = HessianOperator(model, loss_fn, batches, keep_graph)
        if not 1 <= k <= hvp.dim:
            raise ConfigError(f"k must be in [1, {hvp.dim}] (the number of trainable parameters), got {k!r}")
        if max_iter < k:
            raise ConfigError(f"k={k} eigenvalues need max_iter >= {k}, got {max_iter}")
        q = hvp.random_vector(generator)
        basis, alphas, betas = [q / q.norm()], [], []
        while True:
            w = hvp(basis[-1])
            alphas.append(torch.dot(basis[-1], w).item())
            # Making w ⟂ Q_j also does the three-term recurrence (it removes α_j q_j and β_{j−1} q_{j−1});
            # two Gram-Schmidt passes keep Q orthonormal in float32 ("twice is enough").
            for _ in range(2):
                for u in basis:
                    w -= torch.dot(u, w) * u
            betas.append(w.norm().item())
            ritz, vectors = torch.linalg.eigh(_tridiagonal(alphas, betas[:-1]))
            top = ritz.flip(0)[:k]
            residuals = betas[-1] * vectors[-1].flip(0)[:k].abs()
            converged = len(alphas) >= k and bool((residuals <= tol * top.abs()).all())
            # β = 0 or a basis of the whole space: the Krylov space is invariant and its Ritz values exact.
            if converged or betas[-1] == 0 or len(alphas) == hvp.dim:
                break
            if len(alphas) == max_iter:
                warnings.warn(f"Hessian Lanczos stopped at max_iter={max_iter} before relative residual {tol:g}")
                break
            basis.append(w / betas[-1])
    return top.tolist()


def _tridiagonal(diagonal, off_diagonal):
    t = torch.diag(torch.tensor(diagonal, dtype=torch.float64))
    if off_diagonal:
        off = torch.tensor(off_diagonal, dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    return t


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


def _check_noise(sigmas, draws):
    for sigma in sigmas:
        if not sigma >= 0:
            raise ConfigError(f"evaluate.weight_noise.sigmas must be >= 0, got {sigma!r}")
    if draws < 1:
        raise ConfigError(f"evaluate.weight_noise.draws must be >= 1, got {draws!r}")


def weight_noise_accuracy(model, data, sigmas, draws, seed=0):
    """{"weight_noise_acc_{σ:g}": mean test accuracy over `draws` noisy copies (see perturb_weights)}.

    Every σ restarts the generator at `seed`, so all σ share the same noise directions (the accuracy
    vs σ curve is smooth in σ) and a σ's value does not depend on the other σ in the list.
    """
    _check_noise(sigmas, draws)
    results = {}
    for sigma in sigmas:
        generator = torch.Generator().manual_seed(seed)
        total = sum(accuracy(perturb_weights(model, sigma, generator), data.test_x, data.test_y) for _ in range(draws))
        results[f"weight_noise_acc_{sigma:g}"] = total / draws
    return results


# ---------------------------------------------------------------------------------------------
# The end-of-training evaluators

DEFAULTS = dataclasses.asdict(EvaluateConfig())


def checked_config(evaluate_cfg):
    """The `evaluate:` section with missing keys (also inside hessian, weight_noise) at their defaults,
    every value checked, so a bad one fails before any evaluation runs."""
    cfg = {**DEFAULTS, **evaluate_cfg}
    for section in ("hessian", "weight_noise"):
        cfg[section] = {**DEFAULTS[section], **evaluate_cfg.get(section, {})}
    for bits in cfg["ptq_bits"]:
        _check_bits(bits)
    hessian = cfg["hessian"]
    for key in ("samples", "probes", "max_iter", "batch_size"):
        if hessian[key] < 1:
            raise ConfigError(f"evaluate.hessian.{key} must be >= 1, got {hessian[key]!r}")
    _check_iteration(hessian["tol"], hessian["max_iter"])
    _check_noise(cfg["weight_noise"]["sigmas"], cfg["weight_noise"]["draws"])
    return cfg


@METRICS.register("ptq")
def evaluate_ptq(model, data, evaluate_cfg, seed):
    """ptq_acc_{b}bit for every b in evaluate.ptq_bits, plus ptq_acc_{b}bit_per_channel if ptq_per_channel."""
    cfg = checked_config(evaluate_cfg)
    results = ptq_accuracy(model, data, cfg["ptq_bits"])
    if cfg["ptq_per_channel"]:
        results.update(ptq_accuracy(model, data, cfg["ptq_bits"], per_channel=True))
    return results


def hessian_sample(data, samples, batch_size, seed):
    """`samples` training examples (all of them if fewer) in batches of `batch_size`.

    Chosen by a generator seeded with the trial seed alone, so every method trained with the same
    seed is measured on the same samples and eigenvalues compare across methods. The labels are
    train_y, the (possibly noisy) labels the optimizer minimised the loss on: H is the Hessian of
    the actual training loss.
    """
    order = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(seed))
    index = order[:samples].to(data.train_y.device)
    return list(zip(data.train_x[index].split(batch_size), data.train_y[index].split(batch_size)))


@METRICS.register("hessian")
def evaluate_hessian(model, data, evaluate_cfg, seed):
    """hessian_top_eig and hessian_trace of the mean cross-entropy on the seed's training sample.

    With samples <= batch_size the gradient graph is built once and reused (about 1.6x faster per
    product); with more samples it is rebuilt batch by batch on every product.
    """
    cfg = checked_config(evaluate_cfg)["hessian"]
    if not (cfg["top_eigenvalue"] or cfg["trace"]):
        return {}
    batches = hessian_sample(data, cfg["samples"], cfg["batch_size"], seed)
    # evaluate.hessian.batch_size bounds the memory: one batch's graph is held during a product
    # anyway, so keeping it costs nothing extra; several batches' graphs would be held all at once.
    keep_graph = len(batches) == 1
    results = {}
    if cfg["top_eigenvalue"]:
        results["hessian_top_eig"] = hessian_top_eigenvalue(
            model, F.cross_entropy, batches, tol=cfg["tol"], max_iter=cfg["max_iter"], seed=seed, keep_graph=keep_graph
        )
    if cfg["trace"]:
        results["hessian_trace"] = hessian_trace(
            model, F.cross_entropy, batches, probes=cfg["probes"], seed=seed, keep_graph=keep_graph
        )
    return results


@METRICS.register("weight_noise")
def evaluate_weight_noise(model, data, evaluate_cfg, seed):
    """weight_noise_acc_{σ} for every σ in evaluate.weight_noise.sigmas."""
    cfg = checked_config(evaluate_cfg)["weight_noise"]
    return weight_noise_accuracy(model, data, cfg["sigmas"], cfg["draws"], seed)


def evaluate(model, data, evaluate_cfg, seed):
    """Run every registered evaluator on the trained model and merge their results.

    Each evaluator returns {} for what the cfg disables (ptq_bits: [], sigmas: [], both Hessian
    flags false). The whole cfg is checked first, so a bad value fails before any work.
    """
    cfg = checked_config(evaluate_cfg)
    results = {}
    for name in METRICS.names():
        results.update(METRICS.get(name)(model, data, cfg, seed))
    return results
