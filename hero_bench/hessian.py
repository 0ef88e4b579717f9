"""Curvature of the training loss: Hessian-vector products, the top eigenvalue, the trace.

H is the Hessian of the mean loss over a fixed sample of training data with respect to all
trainable parameters, computed with the model in eval mode (BatchNorm uses its running statistics,
dropout is off), so it is the Hessian of one fixed function of the weights. Every estimator here
works on Hessian-vector products by double backpropagation and never forms H. Definitions:
docs/metrics.md.
"""
import warnings

import torch

from hero_bench.errors import ConfigError
from hero_bench.models import eval_mode


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
