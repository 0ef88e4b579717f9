"""The four training methods: one rule each for turning a batch loss into a gradient (DESIGN.md §2).

    sgd       objective L(W)                                         gradient g(W)
    gradnorm  objective L(W) + γ‖g(W)‖²                              gradient g(W) + 2γ H(W) g(W)
    sam       objective L(W + z), z held constant                    gradient g(W + z)
    hero      objective L(W + z) + γ Σ_l ‖g_l(W+z) − sg[g_l(W)]‖²/n_l gradient g(W + z) + 2γ H(W + z) D

    z   = ρ T² g(W) / (‖T g(W)‖ + 1e-12),  T = |W| elementwise if adaptive else 1, norm over all
          trainable parameters
    D_l = (g_l(W + z) − g_l(W)) / n_l on the weight of every Conv and Linear layer (n_l its element
          count), 0 on every other parameter; H(W + z) D still reaches every parameter.

ρ is `radius`, γ is `hessian_coef`. Every gradient is applied at W by a base optimizer (SGD with
momentum and weight decay by default), which owns the learning rate, momentum, weight decay and
schedule, so the four methods differ only in the gradient they hand it.

Each step is `optimizer.step(closure)`; `closure()` runs the forward pass on the batch and returns the
scalar loss without calling backward. The method calls it as often as it needs: first at W, then at
the perturbed points (W + z, and W + z + hv̂ for a finite-difference Hessian-vector product). Every
call after the first sees the random numbers of the first (same dropout masks) and leaves BatchNorm
running statistics alone, so those are updated exactly once per step, by the pass at W.

Hessian-vector products (`hvp`): `exact` is double backpropagation; `fd` a one-sided finite difference
of gradients (one extra gradient); `auto` runs `fd` and, every `hvp_check_every` steps, also `exact` on
the same batch; the first time their cosine drops below 0.99 it switches to `exact` for good and
records the step in `hvp_fallback_step`.

Cost accounting: `grad_evals` counts gradients of the batch loss (a closure call plus a backward
pass), fd's extra gradient included; `hvp_evals` counts exact (double-backward) Hessian-vector
products. Per step with a Hessian term: hero fd 3 + 0, hero exact 2 + 1, gradnorm fd 2 + 0, gradnorm
exact 1 + 1, an auto check one more of each than fd; sgd 1, sam 2.
"""
import inspect
import math
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from hero_bench.errors import ConfigError, DivergedError
from hero_bench.registry import Registry

METHODS = Registry("method")

HVP_MODES = ("auto", "fd", "exact")
HVP_CHECK_MIN_COSINE = 0.99
# Layers whose weight tensors carry HERO's gradient-difference penalty (biases and norm layers do not).
PENALIZED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
# Finite-difference step h = FD_STEP_SCALE · √ε · (1 + ‖x‖); Method._hvp_fd says how it was chosen.
FD_STEP_SCALE = 0.01
# γ when none is given: the authors' ResNet-20/CIFAR-10 setting for hero; a moderate value for gradnorm.
DEFAULT_HESSIAN_COEF = {"gradnorm": 0.1, "hero": 5.0}
_COUNTERS = ("steps", "grad_evals", "hvp_evals", "hvp_fallback_step", "hvp_check_cosine", "next_hvp_check")


class Method(torch.optim.Optimizer):
    """One of sgd, gradnorm, sam, hero wrapped around a base optimizer that applies its gradient.

    `param_groups` are the base optimizer's own, so LR schedulers attached to this object drive it.
    Knobs a method does not use are ignored (sgd ignores `radius`), so one config shape serves all four.
    The shared knobs `lr`, `momentum`, `weight_decay`, `nesterov` go to the base optimizer when its
    constructor takes them; `base_kwargs` are forwarded to it verbatim (e.g. Adam's `betas`).
    """

    def __init__(self, name, model, *, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=False,
                 radius=0.5, hessian_coef=None, adaptive=True, hvp="auto", hvp_check_every=50,
                 hessian_every=1, base="SGD", base_kwargs=None):
        hessian_coef = DEFAULT_HESSIAN_COEF.get(name, 0.0) if hessian_coef is None else hessian_coef
        _check_number("optimizer.radius", radius)
        _check_number("optimizer.hessian_coef", hessian_coef)
        _check_count("optimizer.hvp_check_every", hvp_check_every)
        _check_count("optimizer.hessian_every", hessian_every)
        if hvp not in HVP_MODES:
            raise ConfigError(f"optimizer.hvp must be one of {', '.join(HVP_MODES)}, got {hvp!r}")
        if not isinstance(adaptive, bool):
            raise ConfigError(f"optimizer.adaptive must be true or false, got {adaptive!r}")
        self.name = name
        self.radius = float(radius)
        self.hessian_coef = float(hessian_coef) if name in ("gradnorm", "hero") else 0.0
        self.adaptive = adaptive
        self.hvp = hvp
        self.hvp_check_every = hvp_check_every
        self.hessian_every = hessian_every
        self.perturbs = name in ("sam", "hero")
        self._batchnorms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self._penalized = {id(m.weight) for m in model.modules()
                           if isinstance(m, PENALIZED_LAYERS) and m.weight.requires_grad}
        if name == "hero" and self.hessian_coef > 0 and not self._penalized:
            raise ConfigError("optimizer.hessian_coef > 0 needs a model with a trainable Conv or Linear weight")
        self.steps = 0
        self.grad_evals = 0
        self.hvp_evals = 0
        self.hvp_fallback_step = None  # 0-based step at which auto switched from fd to exact for good
        self.hvp_check_cosine = None  # cosine of fd vs exact at auto's latest check
        self.next_hvp_check = 0  # auto checks fd on the first Hessian step at or after this step

        super().__init__([p for p in model.parameters() if p.requires_grad], {})
        base_class = _base_class(base)
        accepted = inspect.signature(base_class).parameters
        shared = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
        kwargs = {k: v for k, v in shared.items() if k in accepted} | dict(base_kwargs or {})
        try:
            self.base = base_class(self.param_groups, **kwargs)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"optimizer.base {base_class.__name__} rejects {kwargs}: {error}") from error
        self.param_groups = self.base.param_groups
        self.defaults = self.base.defaults

    def step(self, closure=None):
        """Compute this method's gradient on the closure's batch and let the base optimizer apply it at W.

        Returns the loss at W (detached). If any pass of the step gives a NaN or infinite loss, raises
        DivergedError with the parameters as they were before the step.
        """
        if closure is None:
            raise ValueError(f"{self.name} needs step(closure): closure() returns the batch loss, no backward")
        closure = torch.enable_grad()(closure)
        params = [p for group in self.param_groups for p in group["params"]]
        hvp = self._hvp_mode()
        exact_graph = hvp in ("exact", "check")
        pieces = _FrozenPieces(params[0].device.type) if hvp in ("fd", "check") else None  # recorded at x of H(x)v
        moves = self.perturbs or pieces is not None  # passes at other points than W follow
        rng = _rng_state(params) if moves else None
        loss = self._loss(closure, pieces=None if self.perturbs else pieces)
        anchor = [p.detach().clone() for p in params] if moves else None
        try:
            if self.perturbs:
                g_w = self._grad(loss, params)
                _shift(params, self._perturbation(params, g_w))  # climb to W + z
                g = self._grad(self._loss(closure, rng, pieces), params, create_graph=exact_graph)
            else:
                g = self._grad(loss, params, create_graph=exact_graph)
            if hvp:
                if self.name == "hero":  # D_l = (g_l(W + z) − g_l(W)) / n_l on penalized weights
                    v = [(gi.detach() - gw) / gi.numel() if id(p) in self._penalized else None
                         for p, gi, gw in zip(params, g, g_w)]
                else:  # gradnorm: along g(W)
                    v = [gi.detach() for gi in g]
                hv = self._hvp(closure, rng, pieces, params, g, v, hvp)
                g = torch._foreach_add([gi.detach() for gi in g], hv, alpha=2 * self.hessian_coef)
        finally:
            if anchor is not None:
                _restore(params, anchor)  # back to W: the gradient is applied there
        for p, gi in zip(params, g):
            p.grad = gi.detach()
        self.base.step()
        self.steps += 1
        return loss.detach()

    def _hvp_mode(self):
        """This step's Hessian-vector product: None (no Hessian term), 'fd', 'exact' or 'check' (both)."""
        if self.hessian_coef == 0 or self.steps % self.hessian_every:
            return None  # sgd, sam, γ = 0, or a plain step between Hessian steps
        if self.hvp != "auto":
            return self.hvp
        if self.hvp_fallback_step is not None:
            return "exact"
        return "check" if self.steps >= self.next_hvp_check else "fd"

    def _perturbation(self, params, g):
        """z = ρ T² g / (‖T g‖ + 1e-12), T = |W| if adaptive else 1, one norm over all parameters."""
        if not self.adaptive:
            return torch._foreach_mul(g, self.radius / (_norm(g) + 1e-12))
        t = torch._foreach_abs(params)
        tg = torch._foreach_mul(g, t)
        return torch._foreach_mul(torch._foreach_mul(tg, t), self.radius / (_norm(tg) + 1e-12))

    def _hvp(self, closure, rng, pieces, params, g, v, mode):
        """H(x) v at the current point x, where g = g(x) (with its graph when mode needs exact)."""
        v_norm = _norm([vi for vi in v if vi is not None]).item()
        if v_norm == 0:  # ρ = 0 makes D = 0: nothing to differentiate, and no cosine to check
            return [torch.zeros_like(p) for p in params]
        if mode == "exact":
            return self._hvp_exact(params, g, v)
        if mode == "fd":
            return self._hvp_fd(closure, rng, pieces, params, g, v, v_norm)
        exact = self._hvp_exact(params, g, v)  # before fd moves the weights the graph was built on
        fd = self._hvp_fd(closure, rng, pieces, params, g, v, v_norm)
        self.hvp_check_cosine = _cosine(exact, fd)
        self.next_hvp_check = self.steps + self.hvp_check_every
        if self.hvp_check_cosine < HVP_CHECK_MIN_COSINE:
            self.hvp_fallback_step = self.steps
        return exact

    def _hvp_exact(self, params, g, v):
        """H v = ∇(g · sg[v]) by double backpropagation through g's graph."""
        self.hvp_evals += 1
        g_dot_v = sum((gi * vi).sum() for gi, vi in zip(g, v) if vi is not None)
        return list(torch.autograd.grad(g_dot_v, params, materialize_grads=True))

    def _hvp_fd(self, closure, rng, pieces, params, g, v, v_norm):
        """H(x) v ≈ (g(x + h v̂) − g(x)) ‖v‖ / h with v̂ = v / ‖v‖: one extra gradient, g(x) reused,
        and the pass at x + h v̂ held on the linear pieces recorded at x (see _FrozenPieces).

        Step h = c √ε (1 + ‖x‖) with ε the parameters' machine epsilon and c = FD_STEP_SCALE: the
        usual balance of truncation error (grows with h) against rounding (grows as ε/h), each
        weight moving by about c√ε of the parameter scale. Measured in float32 against a float64
        exact product (1 − cosine, hero and gradnorm directions, digits MLP and ResNet-20 with
        BatchNorm, at init and trained): c = 0.001: up to 2e-3 (rounding); 0.01: at most 2e-5;
        0.1: 4e-4 and 0.3: 4e-3 (truncation, ResNet-20 at init). In float64 every c in 0.01..100
        agrees to 1e-5. Central differences (c = 0.01 on ε^⅓) reach 1e-6 but cost a fourth gradient
        per hero step, so the one-sided form is used. When the closure computes under autocast, ε is
        that of the autocast dtype: in bfloat16 the cosine is then about 0.95-0.98 (MLP, ResNet-20)
        instead of about 0, not enough for auto's check, which switches to exact.
        """
        dtypes = {p.dtype for p in params} | ({pieces.autocast_dtype} if pieces.autocast_dtype else set())
        eps = max(torch.finfo(dtype).eps for dtype in dtypes)
        h = FD_STEP_SCALE * math.sqrt(eps) * (1 + _norm(params).item())
        _shift(params, v, h / v_norm)  # to x + h v̂
        g_h = self._grad(self._loss(closure, rng, pieces.replay()), params)
        return torch._foreach_mul(torch._foreach_sub(g_h, [gi.detach() for gi in g]), v_norm / h)

    def _loss(self, closure, rng=None, pieces=None):
        """closure() at the current weights; rng marks a pass after the first (see _repeat_pass);
        pieces records or replays the pieces of piecewise-linear ops (see _FrozenPieces)."""
        with (_repeat_pass(rng, self._batchnorms) if rng else nullcontext()), \
                (pieces if pieces is not None else nullcontext()):
            loss = closure()
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(f"closure must return the scalar batch loss (a 0-dim tensor), got {shape}")
        if not loss.requires_grad:
            raise ValueError("closure's loss does not depend on any trainable parameter")
        if not torch.isfinite(loss):
            raise DivergedError(f"loss is {loss.item()} at step {self.steps} ({self.name})")
        return loss

    def _grad(self, loss, params, create_graph=False):
        self.grad_evals += 1
        return list(torch.autograd.grad(loss, params, create_graph=create_graph, materialize_grads=True))

    def state_dict(self):
        """The base optimizer's state dict plus this method's counters under 'method'."""
        state = self.base.state_dict()
        state["method"] = {key: getattr(self, key) for key in _COUNTERS}
        return state

    def load_state_dict(self, state_dict):
        state = dict(state_dict)
        counters = state.pop("method")
        self.base.load_state_dict(state)
        self.param_groups = self.base.param_groups  # loading replaces the base optimizer's groups
        for key in _COUNTERS:
            setattr(self, key, counters[key])


def create(name, model, **hyper):
    """Build method `name` (sgd, gradnorm, sam, hero) for `model`'s trainable parameters.

    hyper: lr (0.1), momentum (0.9), weight_decay (5e-4), nesterov (False) for the base optimizer;
    radius ρ (0.5), hessian_coef γ (hero 5.0, gradnorm 0.1), adaptive (True), hvp ('auto'),
    hvp_check_every (50), hessian_every (1: every k-th step is a full hero/gradnorm step, the ones
    between sam/sgd steps), base (torch.optim class or its name, 'SGD'), base_kwargs (dict).
    """
    known = [key for key in inspect.signature(Method).parameters if key not in ("name", "model")]
    unknown = sorted(set(hyper) - set(known))
    if unknown:
        raise ConfigError(f"unknown optimizer option {unknown[0]!r}; known: {', '.join(known)}")
    return METHODS.create(name, model, **hyper)


def _register(name, rule):
    def factory(model, **hyper):
        return Method(name, model, **hyper)

    factory.__doc__ = rule
    METHODS.register(name)(factory)


_register("sgd", "Gradient g(W).")
_register("gradnorm", "Gradient g + 2γ H(W) g of L(W) + γ‖g(W)‖².")
_register("sam", "Gradient g(W + z) of L(W + z), z = ρ T² g / ‖T g‖ held constant.")
_register("hero", "Gradient g(W + z) + 2γ H(W + z) D of L(W + z) + γ Σ_l ‖g_l(W + z) − sg[g_l(W)]‖² / n_l.")


def _check_number(field, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ConfigError(f"{field} must be a finite number >= 0, got {value!r}")


def _check_count(field, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{field} must be an integer >= 1, got {value!r}")


def _base_class(base):
    """A torch.optim.Optimizer subclass, given as the class or its name in torch.optim."""
    found = getattr(torch.optim, base, None) if isinstance(base, str) else base
    if not (isinstance(found, type) and issubclass(found, torch.optim.Optimizer)):
        raise ConfigError(f"optimizer.base must name a torch.optim optimizer such as 'SGD' or 'AdamW', got {base!r}")
    return found


def _norm(tensors):
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


def _cosine(a, b):
    dot = sum((x.double() * y.double()).sum() for x, y in zip(a, b))
    return (dot / (_norm([x.double() for x in a]) * _norm([y.double() for y in b]) + 1e-300)).item()


@torch.no_grad()
def _shift(params, direction, scale=1.0):
    """params += scale · direction, skipping None entries of direction."""
    moved = [(p, d) for p, d in zip(params, direction) if d is not None]
    torch._foreach_add_([p for p, _ in moved], [d for _, d in moved], alpha=scale)


@torch.no_grad()
def _restore(params, values):
    torch._foreach_copy_(params, values)


def _rng_state(params):
    devices = sorted({p.device.index for p in params if p.device.type == "cuda"})
    return devices, torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


@contextmanager
def _repeat_pass(rng, batchnorms):
    """Context of every pass after the first in a step.

    Random numbers: those captured at the start of the step (the same dropout masks), and the
    current state put back afterwards, so a step consumes randomness like a single pass.
    BatchNorm: in training mode with track_running_stats False, _BatchNorm.forward hands
    F.batch_norm no running buffers and skips num_batches_tracked, so batch statistics normalize and
    no buffer changes (torch/nn/modules/batchnorm.py); the pass at W alone updates them.
    """
    devices, cpu_state, cuda_states = rng
    active = [m for m in batchnorms if m.training and m.track_running_stats]
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(cpu_state)
        for device, state in zip(devices, cuda_states):
            torch.cuda.set_rng_state(state, device)
        for m in active:
            m.track_running_stats = False
        try:
            yield
        finally:
            for m in active:
                m.track_running_stats = True


class _FrozenPieces(TorchFunctionMode):
    """Holds every piecewise-linear op of a forward pass on the linear piece it took in a recorded pass.

    The exact product differentiates a ReLU network on the linear piece it is on (the second
    derivative of a kink is 0 almost everywhere). A finite-difference pass at x + h v̂ left alone
    pushes some pre-activations across their kink, and each crossing adds a jump to the gradient
    difference that does not shrink with h: on ResNet-20 at init (float32 and float64 alike) that
    drove the cosine against exact to 0.1-0.7 at every step size that moves the weights at all.
    Recording (no pieces given) runs the ops as usual and keeps the piece each took: the gate u > 0
    of ReLU, the slope of leaky ReLU, the clip pattern of hardtanh and ReLU6, the winners of 2-d max
    pooling. Replaying (the pieces of a recording; same batch, same sequence of ops) evaluates each op
    as its recorded piece, u·slope + offset or a gather at the recorded winners, which at x equals
    the op itself. Kinks of other ops (abs, clamp, max, ...) are left as they are; auto's check
    catches the damage they do.
    """

    def __init__(self, device_type, pieces=None):
        super().__init__()
        self.device_type = device_type
        self.replaying = pieces is not None
        self.pieces = pieces if self.replaying else []
        self.next = 0
        self.autocast_dtype = None  # the recorded pass's autocast dtype, if it ran under autocast

    def replay(self):
        return _FrozenPieces(self.device_type, self.pieces)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.replaying and torch.is_autocast_enabled(self.device_type):
            self.autocast_dtype = torch.get_autocast_dtype(self.device_type)
        kind = _PIECEWISE.get(func)
        if kind is None:
            return func(*args, **kwargs)
        a = _arguments(func, args, kwargs)
        u = a["input"]
        if not self.replaying:
            if kind == "max_pool2d":
                out, winners = F.max_pool2d_with_indices(**{**a, "return_indices": True})
                self.pieces.append(winners)
                return (out, winners) if a["return_indices"] else out
            self.pieces.append(_linear_piece(kind, a))  # before the op: an in-place op overwrites u
            return func(*args, **kwargs)
        if self.next == len(self.pieces):
            raise RuntimeError("the forward pass took other piecewise-linear ops than the recorded one; "
                               "finite differences need the same ops in the same order (use hvp='exact')")
        piece = self.pieces[self.next]
        self.next += 1
        if kind == "max_pool2d":
            out = u.flatten(-2).gather(-1, piece.flatten(-2)).view_as(piece)
            return (out, piece) if a["return_indices"] else out
        slope, offset = piece
        out = u.mul_(slope) if a["inplace"] else u * slope
        return out if offset is None else out.add_(offset)


_PIECEWISE = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", torch.Tensor.relu: "relu",
              torch.Tensor.relu_: "relu", F.leaky_relu: "leaky_relu", F.hardtanh: "hardtanh",
              F.relu6: "hardtanh", F.max_pool2d: "max_pool2d"}
_SIGNATURES = {F.relu: inspect.signature(F.relu), F.leaky_relu: inspect.signature(F.leaky_relu),
               F.hardtanh: inspect.signature(F.hardtanh), F.relu6: inspect.signature(F.relu6),
               F.max_pool2d: inspect.signature(F.max_pool2d_with_indices)}


def _arguments(func, args, kwargs):
    """The op's arguments by name, defaults filled in (torch.relu and Tensor.relu take only the input)."""
    if func not in _SIGNATURES:
        return {"input": args[0], "inplace": func in (torch.relu_, torch.Tensor.relu_)}
    bound = _SIGNATURES[func].bind(*args, **kwargs)
    bound.apply_defaults()
    return bound.arguments


@torch.no_grad()
def _linear_piece(kind, a):
    """(slope, offset) with op(u) = u·slope + offset on the piece each element of u is on."""
    u = a["input"]
    if kind == "relu":
        return u > 0, None
    if kind == "leaky_relu":
        return torch.where(u > 0, 1.0, a["negative_slope"]).to(u.dtype), None
    low, high = a.get("min_val", 0.0), a.get("max_val", 6.0)  # relu6 is hardtanh(0, 6)
    inside = (u > low) & (u < high)
    return inside, torch.where(inside, 0.0, u.clamp(low, high))
