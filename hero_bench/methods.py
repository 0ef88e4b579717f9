"""The training methods: one rule each for turning a batch loss into a gradient.

    sgd       objective L(W)                                          gradient g(W)
    gradnorm  objective L(W) + γ‖g(W)‖²                               gradient g(W) + 2γ H(W) g(W)
    sam       objective L(W + z), z held constant                     gradient g(W + z)
    hero      objective L(W + z) + γ Σ_l ‖g_l(W+z) − sg[g_l(W)]‖²/n_l  gradient g(W + z) + 2γ H(W + z) D

    z   = ρ T² g(W) / (‖T g(W)‖ + 1e-12),  T = |W| elementwise if adaptive else 1, norm over all
          trainable parameters
    D_l = (g_l(W + z) − g_l(W)) / n_l on the weight of every Conv and Linear layer (n_l its element
          count), 0 on every other parameter; H(W + z) D still reaches every parameter.

ρ is `radius`, γ is `hessian_coef`. A method is a `Rule`: whether it climbs to W + z before taking
the gradient, and along which direction its Hessian term differentiates (none, g or D). One generic
`Method.step` carries out any rule; every gradient is applied at W by a base optimizer (SGD with
momentum and weight decay by default), which owns the learning rate, momentum, weight decay and
schedule, so the methods differ only in the gradient they hand it. The full specification is in
docs/methods.md.

Each step is `optimizer.step(closure)`; `closure()` runs the forward pass on the batch and returns the
scalar loss without calling backward. The method calls it as often as it needs: first at W, then at
the perturbed points (W + z, and W + z + hv̂ for a finite-difference Hessian-vector product). Every
call after the first sees the random numbers of the first (same dropout masks) and leaves BatchNorm
running statistics alone, so those are updated exactly once per step, by the pass at W. At ρ = 0,
z = 0: the pass at W + z is the pass at W and is not run again, and D = 0, so hero and sam cost
exactly what sgd costs.

Hessian-vector products (`hvp`, see hero_bench.hvp): `exact` is double backpropagation; `fd` a
one-sided finite difference of gradients (one extra gradient); `auto` runs `fd` and, every
`hvp_check_every` steps, also `exact` on the same batch; the first time their cosine drops below 0.99
it switches to `exact` for good and records the step in `hvp_fallback_step`.

Cost accounting: `grad_evals` counts gradients of the batch loss (a closure call plus a backward
pass), fd's extra gradient included; `hvp_evals` counts exact (double-backward) Hessian-vector
products. Per step with a Hessian term: hero fd 3 + 0, hero exact 2 + 1, gradnorm fd 2 + 0, gradnorm
exact 1 + 1, an auto check one more of each than fd; sgd 1, sam 2 (1 at ρ = 0).
"""
import inspect
import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from hero_bench import hvp as hvps
from hero_bench.errors import ConfigError, DivergedError
from hero_bench.registry import Registry, check_keywords

METHODS = Registry("method")

HVP_MODES = ("auto", "fd", "exact")
HVP_CHECK_MIN_COSINE = 0.99
# Layers whose weight tensors carry HERO's gradient-difference penalty (biases and norm layers do not).
PENALIZED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
_COUNTERS = ("steps", "grad_evals", "hvp_evals", "hvp_fallback_step", "hvp_check_cosine", "next_hvp_check")


@dataclass(frozen=True)
class Rule:
    """What a method does with a batch.

    name: the method's name in `optimizer.name`.
    perturbs: take the gradient at W + z instead of W.
    hessian: the direction v of the Hessian term 2γ H v: None (no term), "g" (the gradient, at W) or
        "D" (the gradient difference g(W + z) − g(W), per penalized tensor divided by its size).
    radius, hessian_coef: the method's defaults for ρ and γ (0 where it does not use the knob).
    """

    name: str
    perturbs: bool
    hessian: str | None
    objective: str
    radius: float = 0.0
    hessian_coef: float = 0.0

    def knobs(self, radius, hessian_coef):
        """(ρ, γ) as this rule uses them: None is the rule's default, a knob it does not use is 0."""
        radius = (self.radius if radius is None else float(radius)) if self.perturbs else 0.0
        hessian_coef = (self.hessian_coef if hessian_coef is None else float(hessian_coef)) if self.hessian else 0.0
        return radius, hessian_coef

    def effective(self, radius, hessian_coef):
        """(perturbs, hessian) as they act at these knobs: ρ = 0 makes z = 0 (no perturbation, and D = 0);
        γ = 0 removes the Hessian term."""
        perturbs = self.perturbs and radius > 0
        active = hessian_coef > 0 and (self.hessian != "D" or perturbs)
        return perturbs, self.hessian if active else None


def register(rule):
    """Make `rule` available as optimizer.name: rule.name (a new method is one such call)."""
    return METHODS.register(rule.name)(rule)


register(Rule("sgd", False, None, "L(W)"))
register(Rule("gradnorm", False, "g", "L(W) + γ‖g(W)‖²", hessian_coef=0.1))
register(Rule("sam", True, None, "L(W + z), z = ρ T² g / ‖T g‖ held constant", radius=0.5))
register(Rule("hero", True, "D", "L(W + z) + γ Σ_l ‖g_l(W + z) − sg[g_l(W)]‖² / n_l", radius=0.5, hessian_coef=5.0))


def family(name, radius, hessian_coef):
    """The method a configuration computes: the registered rule that acts like `name` at (ρ, γ).

    hero at ρ = 0 is sgd and at γ = 0 sam; sam at ρ = 0 is sgd; gradnorm at γ = 0 is sgd. A name that
    is not registered is its own family.
    """
    if name not in METHODS:
        return name
    rule = METHODS.get(name)
    acts = rule.effective(radius, hessian_coef)
    if acts == (rule.perturbs, rule.hessian):
        return name
    rules = (METHODS.get(other) for other in METHODS.names())
    return next((other.name for other in rules if (other.perturbs, other.hessian) == acts), name)


class Method(torch.optim.Optimizer):
    """A rule carried out around a base optimizer that applies its gradient.

    `param_groups` are the base optimizer's own, so LR schedulers attached to this object drive it.
    Knobs a rule does not use are ignored (sgd ignores `radius`), so one config shape serves all.
    The shared knobs `lr`, `momentum`, `weight_decay`, `nesterov` go to the base optimizer when its
    constructor takes them; `base_kwargs` are forwarded to it verbatim (e.g. Adam's `betas`).
    `hessian_warmup_steps`: the Hessian term is off for the first steps (hero is then sam).
    Arguments are trusted: `create` is the checked door.
    """

    def __init__(self, rule, model, *, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=False,
                 radius=None, hessian_coef=None, adaptive=True, hvp="auto", hvp_check_every=50,
                 hessian_every=1, hessian_warmup_steps=0, base="SGD", base_kwargs=None):
        self.rule = rule
        self.radius, self.hessian_coef = rule.knobs(radius, hessian_coef)
        self.adaptive = adaptive
        self.hvp = hvp
        self.hvp_check_every = hvp_check_every
        self.hessian_every = hessian_every
        self.hessian_warmup_steps = hessian_warmup_steps
        self._batchnorms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self._penalized = {id(m.weight) for m in model.modules()
                           if isinstance(m, PENALIZED_LAYERS) and m.weight.requires_grad}
        if rule.hessian == "D" and self.hessian_coef > 0 and not self._penalized:
            raise ConfigError("optimizer.hessian_coef > 0 needs a model with a trainable Conv or Linear weight")
        self.steps = 0
        self.grad_evals = 0
        self.hvp_evals = 0
        self.hvp_fallback_step = None  # 0-based step at which auto switched from fd to exact for good
        self.hvp_check_cosine = None  # cosine of fd vs exact at auto's latest check
        self.next_hvp_check = 0  # auto checks fd on the first Hessian step at or after this step

        super().__init__([p for p in model.parameters() if p.requires_grad], {})
        base_class = _base_class(base)
        shared = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
        accepted = inspect.signature(base_class).parameters
        kwargs = {k: v for k, v in shared.items() if k in accepted} | dict(base_kwargs or {})
        try:
            self.base = base_class(self.param_groups, **kwargs)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"optimizer.base {base_class.__name__} rejects {kwargs}: {error}") from error
        self.param_groups = self.base.param_groups
        self.defaults = self.base.defaults

    def step(self, closure=None):
        """Compute this rule's gradient on the closure's batch and let the base optimizer apply it at W.

        Returns the loss at W (detached). If any pass of the step gives a NaN or infinite loss, raises
        DivergedError with the parameters as they were before the step.
        """
        if closure is None:
            raise ValueError(f"{self.rule.name} needs step(closure): closure() returns the batch loss, no backward")
        closure = torch.enable_grad()(closure)
        params = [p for group in self.param_groups for p in group["params"]]
        perturbs, direction = self.rule.effective(self.radius, self.hessian_coef)
        mode = self._hvp_mode(direction)
        exact_graph = mode in ("exact", "check")
        pieces = hvps.FrozenPieces(params[0].device.type) if mode in ("fd", "check") else None  # at x of H(x)v
        moves = perturbs or pieces is not None  # passes at other points than W follow
        rng = _rng_state(params) if moves else None
        loss = self._loss(closure, pieces=None if perturbs else pieces)
        anchor = [p.detach().clone() for p in params] if moves else None
        try:
            if perturbs:
                g_w = self._grad(loss, params)
                hvps.shift(params, self._perturbation(params, g_w))  # climb to W + z
                g = self._grad(self._loss(closure, rng, pieces), params, create_graph=exact_graph)
            else:
                g = self._grad(loss, params, create_graph=exact_graph)
            if mode:
                if direction == "D":  # D_l = (g_l(W + z) − g_l(W)) / n_l on penalized weights
                    v = [(gi.detach() - gw) / gi.numel() if id(p) in self._penalized else None
                         for p, gi, gw in zip(params, g, g_w)]
                else:  # "g": along the gradient itself
                    v = [gi.detach() for gi in g]
                hv = self._hvp(closure, rng, pieces, params, g, v, mode)
                g = torch._foreach_add([gi.detach() for gi in g], hv, alpha=2 * self.hessian_coef)
        finally:
            if anchor is not None:
                with torch.no_grad():
                    torch._foreach_copy_(params, anchor)  # back to W: the gradient is applied there
        for p, gi in zip(params, g):
            p.grad = gi.detach()
        self.base.step()
        self.steps += 1
        return loss.detach()

    def _hvp_mode(self, direction):
        """This step's Hessian-vector product: None (no Hessian term), 'fd', 'exact' or 'check' (both)."""
        if direction is None or self.steps < self.hessian_warmup_steps or self.steps % self.hessian_every:
            return None  # no term at these knobs, the warm-up, or a plain step between Hessian steps
        if self.hvp != "auto":
            return self.hvp
        if self.hvp_fallback_step is not None:
            return "exact"
        return "check" if self.steps >= self.next_hvp_check else "fd"

    def _perturbation(self, params, g):
        """z = ρ T² g / (‖T g‖ + 1e-12), T = |W| if adaptive else 1, one norm over all parameters."""
        if not self.adaptive:
            return torch._foreach_mul(g, self.radius / (hvps.norm(g) + 1e-12))
        t = torch._foreach_abs(params)
        tg = torch._foreach_mul(g, t)
        return torch._foreach_mul(torch._foreach_mul(tg, t), self.radius / (hvps.norm(tg) + 1e-12))

    def _hvp(self, closure, rng, pieces, params, g, v, mode):
        """H(x) v at the current point x, where g = g(x) (with its graph when mode needs exact)."""
        if hvps.norm([vi for vi in v if vi is not None]).item() == 0:  # nothing to differentiate, no cosine
            return [torch.zeros_like(p) for p in params]
        if mode == "exact":
            return self._exact(params, g, v)
        if mode == "fd":
            return self._finite_difference(closure, rng, pieces, params, g, v)
        exact = self._exact(params, g, v)  # before fd moves the weights the graph was built on
        fd = self._finite_difference(closure, rng, pieces, params, g, v)
        self.hvp_check_cosine = hvps.cosine(exact, fd)
        self.next_hvp_check = self.steps + self.hvp_check_every
        if self.hvp_check_cosine < HVP_CHECK_MIN_COSINE:
            self.hvp_fallback_step = self.steps
        return exact

    def _exact(self, params, g, v):
        self.hvp_evals += 1
        return hvps.exact(params, g, v)

    def _finite_difference(self, closure, rng, pieces, params, g, v):
        return hvps.finite_difference(lambda replay: self._grad(self._loss(closure, rng, replay), params),
                                      params, g, v, pieces)

    def _loss(self, closure, rng=None, pieces=None):
        """closure() at the current weights; rng marks a pass after the first (see _repeat_pass);
        pieces records or replays the pieces of piecewise-linear ops (see hvp.FrozenPieces)."""
        with (_repeat_pass(rng, self._batchnorms) if rng else nullcontext()), \
                (pieces if pieces is not None else nullcontext()):
            loss = closure()
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(f"closure must return the scalar batch loss (a 0-dim tensor), got {shape}")
        if not loss.requires_grad:
            raise ValueError("closure's loss does not depend on any trainable parameter")
        if not torch.isfinite(loss):
            raise DivergedError(f"loss is {loss.item()} at step {self.steps} ({self.rule.name})")
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
    """Build method `name` (see `hero-bench list methods`) for `model`'s trainable parameters.

    hyper: lr (0.1), momentum (0.9), weight_decay (5e-4), nesterov (False) for the base optimizer;
    radius ρ and hessian_coef γ (the method's defaults: hero 0.5 and 5.0, sam 0.5, gradnorm γ 0.1),
    adaptive (True), hvp ('auto'), hvp_check_every (50), hessian_every (1: every k-th step is a full
    hero/gradnorm step, the ones between sam/sgd steps), hessian_warmup_steps (0), base (torch.optim
    class or its name, 'SGD'), base_kwargs (dict). Every value is checked here.
    """
    rule = METHODS.get(name)
    check_keywords(Method, hyper, "unknown optimizer option {!r}", skip=("rule", "model"), listing="known")
    for key in ("radius", "hessian_coef"):
        if hyper.get(key) is not None:
            _check_number(f"optimizer.{key}", hyper[key])
    for key in ("hvp_check_every", "hessian_every"):
        _check_count(f"optimizer.{key}", hyper.get(key, 1))
    _check_count("hessian_warmup_steps", hyper.get("hessian_warmup_steps", 0), low=0)
    if hyper.get("hvp", "auto") not in HVP_MODES:
        raise ConfigError(f"optimizer.hvp must be one of {', '.join(HVP_MODES)}, got {hyper['hvp']!r}")
    if not isinstance(hyper.get("adaptive", True), bool):
        raise ConfigError(f"optimizer.adaptive must be true or false, got {hyper['adaptive']!r}")
    return Method(rule, model, **hyper)


def _check_number(field, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ConfigError(f"{field} must be a finite number >= 0, got {value!r}")


def _check_count(field, value, low=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{field} must be an integer >= {low}, got {value!r}")


def _base_class(base):
    """A torch.optim.Optimizer subclass, given as the class or its name in torch.optim."""
    found = getattr(torch.optim, base, None) if isinstance(base, str) else base
    if not (isinstance(found, type) and issubclass(found, torch.optim.Optimizer)):
        raise ConfigError(f"optimizer.base must name a torch.optim optimizer such as 'SGD' or 'AdamW', got {base!r}")
    return found


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
