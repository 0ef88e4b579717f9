"""Curvature of the training loss: the top eigenvalues (Lanczos), the trace (Hutchinson) and the
spectral density (stochastic Lanczos quadrature).

H is the Hessian of the mean loss over a fixed sample of training data with respect to all
trainable parameters, computed with the model in eval mode (BatchNorm uses its running statistics,
dropout is off), so it is the Hessian of one fixed function of the weights. Every estimator here
works on Hessian-vector products by double backpropagation and never forms H. `hessian_operator`
is the setup they share (one eval-mode switch, one gradient graph); `hessian_curvature` runs any of
them on one setup. Definitions: docs/metrics.md.
"""
import contextlib
import math
import warnings

import torch

from hero_bench.errors import ConfigError
from hero_bench.models import eval_mode


class HessianOperator:
    """v ↦ H v, with H the Hessian of L(θ) = Σ_b (n_b/N) loss_fn(model(x_b), y_b) w.r.t. the trainable θ.

    Weighting each batch's mean loss by its share n_b/N of the N samples makes L the mean loss over
    all samples, so any split of the same samples gives the same H. Vectors are flat, in the order of
    `model.parameters()`. The caller keeps the model in eval mode while the operator is used
    (`hessian_operator` does).

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
        self.gradient = self._gradient(self.batches, create_graph=True) if keep_graph else None

    def _gradient(self, batches, create_graph):
        loss = sum(weight * self.loss_fn(self.model(inputs), targets) for inputs, targets, weight in batches)
        return torch.autograd.grad(loss, self.params, create_graph=create_graph, allow_unused=True,
                                   materialize_grads=True)

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
                for total, part in zip(products, self._product(self._gradient([batch], True), vectors, False)):
                    total += part
        return torch.cat([h.reshape(-1) for h in products])

    def gradient_vector(self):
        """∇L as one flat vector without a graph: the kept gradient, or one plain backward pass."""
        gradient = self.gradient if self.gradient is not None else self._gradient(self.batches, create_graph=False)
        return torch.cat([g.detach().reshape(-1) for g in gradient])

    def random_vector(self, generator, rademacher=False):
        """A flat random vector (N(0, I), or ±1 entries) drawn on the CPU, so a seed means the same on any device."""
        p = self.params[0]
        if rademacher:
            v = torch.randint(0, 2, (self.dim,), generator=generator).mul_(2).sub_(1)
        else:
            v = torch.randn(self.dim, generator=generator, dtype=torch.float64)
        return v.to(device=p.device, dtype=p.dtype)


@contextlib.contextmanager
def hessian_operator(model, loss_fn, batches, keep_graph=True):
    """The model in eval mode for the block (its mode restored after) and one HessianOperator on it."""
    with eval_mode(model):
        yield HessianOperator(model, loss_fn, batches, keep_graph)


# ---------------------------------------------------------------------------------------------
# Lanczos


class Lanczos:
    """Lanczos on the operator `hvp`, fully re-orthogonalized.

    From a unit start q_1 it builds an orthonormal basis Q_j = [q_1 … q_j] of the Krylov space
    span{q_1, Hq_1, …, H^(j−1) q_1} and the tridiagonal T_j = Q_jᵀ H Q_j, one product per step:
        w = H q_j,   α_j = q_jᵀ w,   w ← w − Q_j Q_jᵀ w (twice),   β_j = ‖w‖,   q_{j+1} = w / β_j.
    Removing from w its components along all of Q_j does the three-term recurrence (α_j q_j and
    β_{j−1} q_{j−1}) and keeps Q orthonormal in float32; two classical Gram-Schmidt passes suffice
    ("twice is enough"). It stores j flat vectors. The eigenpairs (θ_i, s_i) of T_j (Ritz pairs)
    approximate H's, extreme eigenvalues first, far faster than power iteration.

    When w vanishes (β_j at rounding level) span Q_j is invariant under H: its Ritz values are
    eigenvalues of H, and the Krylov space cannot grow. It holds every distinct eigenvalue whose
    eigenvectors the start has a component along (almost surely all, from a random start), each once.
    """

    def __init__(self, hvp, start):
        self.hvp = hvp
        self.basis = start.new_empty(16, len(start))  # grown by doubling: max_iter may be far above the steps taken
        self.steps, self.alphas, self.betas = 0, [], []
        self.next, self.scale = start / start.norm(), 0.0

    def step(self):
        """One product H q_j. Returns whether the Krylov space can grow further (False once it spans an
        invariant subspace, the whole space included)."""
        if self.steps == len(self.basis):
            self.basis = torch.cat([self.basis, torch.empty_like(self.basis)])
        q = self.basis[self.steps] = self.next
        self.steps += 1
        w = self.hvp(q)
        self.alphas.append(torch.dot(q, w).item())
        basis = self.basis[: self.steps]
        for _ in range(2):
            w -= basis.T @ (basis @ w)
        beta = w.norm().item()
        self.scale = max(self.scale, abs(self.alphas[-1]), beta)
        invariant = self.steps == len(q) or beta <= torch.finfo(w.dtype).eps * self.scale
        self.betas.append(0.0 if invariant else beta)
        self.next = None if invariant else w / beta
        return not invariant

    def _eigh(self):
        """Eigenvalues (ascending) and eigenvectors of T_j, in float64."""
        t = torch.diag(torch.tensor(self.alphas, dtype=torch.float64))
        if self.steps > 1:
            off = torch.tensor(self.betas[:-1], dtype=torch.float64)
            t += torch.diag(off, 1) + torch.diag(off, -1)
        return torch.linalg.eigh(t)

    def ritz(self):
        """Ritz values θ (descending) and, per value, a bound on its distance to an eigenvalue of H:

            |θ_i − λ| ≤ min(r_i, r_i² / δ_i),   r_i = ‖H Q s_i − θ_i Q s_i‖ = β_j |s_i[j]|,

        with λ the eigenvalue of H nearest θ_i. r_i bounds it alone; r_i²/δ_i is the sharper
        quadratic bound (Kato-Temple), where δ_i, the gap from θ_i to the rest of H's spectrum, is
        estimated by the distance to the nearest other Ritz value (the plain residual at step 1).
        """
        theta, s = self._eigh()
        theta, s = theta.flip(0), s.flip(1)
        residual = self.betas[-1] * s[-1].abs()
        if self.steps == 1:
            return theta, residual
        gap = (theta[:, None] - theta[None, :]).abs().fill_diagonal_(math.inf).amin(dim=1)
        return theta, torch.where(gap > 0, torch.minimum(residual, residual**2 / gap), residual)

    def quadrature(self):
        """Gauss quadrature of the start's spectral measure: nodes θ_i and weights s_i[0]² (sum 1), so
        Σ_i s_i[0]² f(θ_i) = q_1ᵀ f(H) q_1 exactly for every polynomial f of degree < 2j."""
        theta, s = self._eigh()
        return theta, s[0] ** 2


def top_eigenvalues(hvp, k, *, tol, max_iter, start):
    """The k largest (algebraic) eigenvalues of the operator, descending, by Lanczos from `start`.

    Stops when each has error bound (Lanczos.ritz) ≤ tol·|θ| and its last rise did not exceed the
    bound it had one step before, when the Krylov space is invariant (its Ritz values exact; fewer
    than k if it holds fewer), or after `max_iter` products (with a warning). The i-th largest Ritz
    value only rises towards λ_i, so each rise is a lower bound on the previous step's error: a rise
    above the previous bound shows that the Ritz values, which give the bound its gap, have not
    resolved the spectrum yet (tests/test_hessian.py has a case where the bound alone stops at 24%
    error for tol 0.1).
    """
    lanczos, previous = Lanczos(hvp, start), None
    while True:
        grows = lanczos.step()
        theta, bound = lanczos.ritz()
        top, bound = theta[:k], bound[:k]
        consistent = previous is not None and len(previous[0]) == k and bool(
            ((top - previous[0]).abs() <= previous[1]).all())
        if not grows or (consistent and bool((bound <= tol * top.abs()).all())):
            return top.tolist()
        if lanczos.steps == max_iter:
            warnings.warn(f"Hessian Lanczos stopped at max_iter={max_iter} before relative error bound {tol:g}")
            return top.tolist()
        previous = top, bound


def lanczos_start(hvp, generator):
    """ĝ + r̂: the unit gradient plus a unit N(0, I) vector drawn with `generator`.

    The gradient lies mostly in the top eigenspace of the Hessian, so Lanczos from it needs fewer
    products (1-3 fewer, measured in benchmarks/hessian_cost.py); the random half keeps a component
    along every eigenvector (almost surely), so λ_max is found even where ∇L is orthogonal to its
    eigenvector or zero.
    """
    r = hvp.random_vector(generator)
    g = hvp.gradient_vector()
    g_norm = g.norm()
    return r / r.norm() + (g / g_norm if g_norm > 0 else 0)


def hutchinson_trace(hvp, probes, generator):
    """(1/m) Σ_i z_iᵀ H z_i over m = `probes` Rademacher vectors z_i drawn with `generator`."""
    total = 0.0
    for _ in range(probes):
        z = hvp.random_vector(generator, rademacher=True)
        total += torch.dot(z, hvp(z)).item()
    return total / probes


def slq_density(hvp, runs, steps, generator):
    """Stochastic Lanczos quadrature (Ghorbani et al. 2019) of H's spectral density
    φ(t) = (1/d) Σ_i δ(t − λ_i): `runs` Lanczos runs of `steps` products, each from a unit Rademacher
    start q (z/√d), give nodes θ and weights τ with Σ τ f(θ) = qᵀ f(H) q, whose expectation over q is
    (1/d) tr f(H) = ∫ f dφ. A run that spans an invariant subspace stops early: its quadrature is
    then exact. Returns (nodes, weights / runs) of all runs, float64; the weights sum to 1.
    """
    nodes, weights = [], []
    for _ in range(runs):
        lanczos = Lanczos(hvp, hvp.random_vector(generator, rademacher=True))
        while lanczos.step() and lanczos.steps < steps:
            pass
        theta, tau = lanczos.quadrature()
        nodes.append(theta)
        weights.append(tau / runs)
    return torch.cat(nodes), torch.cat(weights)


# ---------------------------------------------------------------------------------------------
# The estimators on a model


def _check(tol, max_iter, probes, density):
    if not tol > 0:
        raise ConfigError(f"evaluate.hessian.tol must be > 0, got {tol!r}")
    if max_iter < 1:
        raise ConfigError(f"evaluate.hessian.max_iter must be >= 1, got {max_iter!r}")
    if probes < 1:
        raise ConfigError(f"evaluate.hessian.probes must be >= 1, got {probes!r}")
    if density is not None:
        runs, steps = density
        if runs < 1 or steps < 1:
            raise ConfigError(f"evaluate.hessian.density runs and steps must be >= 1, got runs={runs!r}, steps={steps!r}")


def hessian_curvature(model, loss_fn, batches, *, top_eigenvalue=True, trace=True, density=None, tol=1e-3,
                      max_iter=100, probes=32, seed=0, keep_graph=True):
    """Any of λ_max (`top_eigenvalue`), tr(H) (`trace`) and the spectral density (`density`: (runs,
    steps) or None) from one setup: one eval-mode switch, one gradient graph. Returns a dict with the
    keys requested of "top_eigenvalue", "trace" and "density" ((nodes, weights), see slq_density).

    Each estimator draws from its own generator seeded with `seed`, so every value equals that of
    its own function (hessian_top_eigenvalue, hessian_trace, hessian_density) with the same seed.
    Same H, batches and eval mode as `hessian_top_eigenvalue`.
    """
    _check(tol, max_iter, probes, density)
    results = {}
    if not (top_eigenvalue or trace or density):
        return results
    with hessian_operator(model, loss_fn, batches, keep_graph) as hvp:
        if top_eigenvalue:
            start = lanczos_start(hvp, torch.Generator().manual_seed(seed))
            results["top_eigenvalue"] = top_eigenvalues(hvp, 1, tol=tol, max_iter=max_iter, start=start)[0]
        if trace:
            results["trace"] = hutchinson_trace(hvp, probes, torch.Generator().manual_seed(seed))
        if density:
            results["density"] = slq_density(hvp, *density, torch.Generator().manual_seed(seed))
    return results


def hessian_top_eigenvalue(model, loss_fn, batches, *, tol=1e-3, max_iter=100, seed=0, keep_graph=True):
    """Largest (algebraic) eigenvalue λ_max of the Hessian of the mean loss over all samples in
    `batches`, each batch's mean loss weighted by its size (see HessianOperator), w.r.t. all
    trainable parameters.

    Lanczos (see Lanczos) on Hessian-vector products (double backprop) from the unit gradient plus
    a unit N(0, I) vector drawn with `seed` (lanczos_start), until the largest Ritz value θ has an
    error bound of at most `tol`·|θ| that the previous step's bound agrees with (top_eigenvalues),
    or after `max_iter` products (with a warning). Lanczos gives the largest algebraic eigenvalue
    directly, also where a negative eigenvalue has the largest magnitude (at a saddle).

    The model is in eval mode during the computation (its mode is restored after): BatchNorm then
    normalizes with its running statistics and dropout is off, so H is the Hessian of one fixed
    function of the weights, the same however the samples are split into batches.
    `batches`: a list of (inputs, targets); `loss_fn(outputs, targets)` returns the batch-mean loss.
    `keep_graph`: reuse the gradient graph across products (faster, more memory; see HessianOperator).
    """
    return hessian_curvature(model, loss_fn, batches, trace=False, tol=tol, max_iter=max_iter, seed=seed,
                             keep_graph=keep_graph)["top_eigenvalue"]


def hessian_trace(model, loss_fn, batches, *, probes=32, seed=0, keep_graph=True):
    """Hutchinson estimate tr(H) ≈ (1/m) Σ_i z_iᵀ H z_i over m = `probes` Rademacher vectors z_i.

    Unbiased; its variance is 2 Σ_{i≠j} H_ij² / m. Same H, batches and eval mode as
    `hessian_top_eigenvalue`; the probes are drawn with `seed`.
    """
    return hessian_curvature(model, loss_fn, batches, top_eigenvalue=False, probes=probes, seed=seed,
                             keep_graph=keep_graph)["trace"]


def hessian_density(model, loss_fn, batches, *, runs=1, steps=100, seed=0, keep_graph=True):
    """The Hessian's spectral density by stochastic Lanczos quadrature (slq_density): (nodes,
    weights), float64 tensors of runs·steps entries at most, the weights summing to 1. The starts are
    drawn with `seed`. Same H, batches and eval mode as `hessian_top_eigenvalue`.
    """
    return hessian_curvature(model, loss_fn, batches, top_eigenvalue=False, trace=False, density=(runs, steps),
                             seed=seed, keep_graph=keep_graph)["density"]


def hessian_top_k(model, loss_fn, batches, k, *, tol=1e-3, max_iter=100, seed=0, keep_graph=True):
    """The k largest (algebraic) Hessian eigenvalues, in descending order, by Lanczos (see
    `hessian_top_eigenvalue`), stopping when every one of the k has a relative error bound ≤ tol.
    One start vector sees each distinct eigenvalue once: a repeated eigenvalue is listed once, and
    where the Krylov space becomes invariant (tiny models) fewer than k values can come back."""
    _check(tol, max_iter, 1, None)
    dim = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if not 1 <= k <= dim:
        raise ConfigError(f"k must be in [1, {dim}] (the number of trainable parameters), got {k!r}")
    if max_iter < k:
        raise ConfigError(f"k={k} eigenvalues need max_iter >= {k}, got {max_iter}")
    generator = torch.Generator().manual_seed(seed)
    with hessian_operator(model, loss_fn, batches, keep_graph) as hvp:
        return top_eigenvalues(hvp, k, tol=tol, max_iter=max_iter, start=lanczos_start(hvp, generator))


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
