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
import dataclasses
import inspect
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from hero_bench import hvp as hvps
from hero_bench import validation
from hero_bench.errors import ConfigError, DivergedError
from hero_bench.registry import check_keywords
from hero_bench.rules import METHODS, Rule, family, register  # noqa: F401 - the methods' registry, re-exported
from hero_bench.validation import one_of, within

HVP_CHECK_MIN_COSINE = 0.99
# Layers whose weight tensors carry HERO's gradient-difference penalty (biases and norm layers do not).
PENALIZED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
_COUNTERS = ("steps", "grad_evals", "hvp_evals", "hvp_fallback_step", "hvp_check_cosine", "next_hvp_check")


@dataclass
class OptimizerConfig:
    """The `optimizer:` section of an experiment: which method, and how it carries out its rule.

    Each setting's rule is stated here, once: the experiment schema and `create` both check it. A new
    setting is a field here and its use in `Method`.
    """

    name: str = "sgd"  # sgd | gradnorm | sam | hero, or a registered method of your own
    radius: float | None = within("[0, inf)", None)  # ρ; None: the method's default (sam, hero 0.5)
    hessian_coef: float | None = within("[0, inf)", None)  # γ; None: the method's default (hero 5.0, gradnorm 0.1)
    adaptive: bool = True  # T = |W| in the perturbation (ASAM-style, the HERO authors' default), else T = 1
    hvp: str = one_of(("auto", "fd", "exact"), "auto")  # how Hessian-vector products are computed
    hvp_check_every: int = within("[1, inf)", 50)  # auto: steps between checks of fd against exact
    hessian_every: int = within("[1, inf)", 1)  # every k-th step is a full Hessian step, the others sam/sgd steps
    hessian_warmup_epochs: int = within("[0, inf)", 0)  # the Hessian term is off for the first k epochs (the authors' script: 1)
    args: dict = field(default_factory=dict)  # keyword arguments of a method's own gradient function


class Method(torch.optim.Optimizer):
    """A rule carried out around a base optimizer that applies its gradient.

    `param_groups` are the base optimizer's own, so LR schedulers attached to this object drive it.
    Knobs a rule does not use are ignored (sgd ignores `radius`), so one config shape serves all.
    The shared knobs `lr`, `momentum`, `weight_decay`, `nesterov` go to the base optimizer when its
    constructor takes them; `base_kwargs` are forwarded to it verbatim (e.g. Adam's `betas`).
    `settings`: an OptimizerConfig; `steps_per_epoch` turns its hessian_warmup_epochs into steps.
    Arguments are trusted: `create` is the checked door.
    """

    def __init__(self, rule, model, settings, *, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=False,
                 steps_per_epoch=1, base="SGD", base_kwargs=None):
        self.rule = rule
        self.radius, self.hessian_coef = rule.knobs(settings.radius, settings.hessian_coef)
        self.adaptive = settings.adaptive
        self.hvp = settings.hvp
        self.hvp_check_every = settings.hvp_check_every
        self.hessian_every = settings.hessian_every
        self.hessian_warmup_steps = settings.hessian_warmup_epochs * steps_per_epoch
        self.args = dict(settings.args)
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
        if self.rule.gradient is not None:
            return self._apply(params, *self._own_gradient(closure, params))
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
        return self._apply(params, g, loss)

    def _apply(self, params, g, loss):
        """Hand the gradient `g` to the base optimizer, which applies it at W; returns the loss at W."""
        for p, gi in zip(params, g):
            p.grad = gi.detach()
        self.base.step()
        self.steps += 1
        return loss.detach()

    def _own_gradient(self, closure, params):
        """(gradient, loss at W) of a method with a gradient function of its own (Rule.gradient)."""
        step = Step(self, closure, params)
        try:
            g = self.rule.gradient(step, **self.args)
        finally:
            step.restore()
        if not (isinstance(g, (list, tuple)) and len(g) == len(params)
                and all(isinstance(gi, torch.Tensor) and gi.shape == p.shape for gi, p in zip(g, params))):
            raise ValueError(f"method {self.rule.name}'s gradient function must return one tensor per parameter, "
                             "shaped like it (a list in the order of step.params)")
        return g, step.loss

    def _hvp_mode(self, direction):
        """This step's Hessian-vector product: None (no Hessian term), 'fd', 'exact' or 'check' (both)."""
        if direction is None or self.steps < self.hessian_warmup_steps or self.steps % self.hessian_every:
            return None  # no term at these knobs, the warm-up, or a plain step between Hessian steps
        return self._product_mode()

    def _product_mode(self):
        """How a Hessian-vector product is computed now: hvp's mode, and for auto 'fd', 'check' or 'exact'."""
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


class Step:
    """What a method's own gradient function gets (`Rule.gradient(step, **optimizer.args)`): one
    optimizer step on one batch. The function returns the gradient to apply at W, one tensor per
    parameter in the order of `params`; the base optimizer applies it, as for every rule.

    params          the trainable parameters; at W whenever the function runs
    loss            the batch loss at W (the one pass that updates BatchNorm statistics)
    radius, hessian_coef, adaptive    the method's settings (ρ and γ as the method uses them)
    gradient()      g(W), computed once
    perturbation(g) z = ρ T² g / (‖T g‖ + 1e-12), the ascent step of SAM and HERO
    gradient_at(s)  g(W + s): the batch's loss at W + s (same random numbers as the pass at W,
                    BatchNorm statistics untouched), W restored afterwards
    hvp(v, s=None)  H(W + s) v, in the mode `optimizer.hvp` sets (exact, fd, or auto with its checks)
    Every gradient and product is counted in the method's grad_evals and hvp_evals.
    """

    def __init__(self, method, closure, params):
        self.method, self.closure, self.params = method, closure, params
        self.radius, self.hessian_coef, self.adaptive = method.radius, method.hessian_coef, method.adaptive
        self._rng = _rng_state(params)
        self.loss = method._loss(closure)
        self._anchor = [p.detach().clone() for p in params]
        self._g = None

    def gradient(self):
        if self._g is None:
            self._g = self.method._grad(self.loss, self.params)
        return self._g

    def perturbation(self, g):
        return self.method._perturbation(self.params, g)

    def gradient_at(self, shift):
        try:
            hvps.shift(self.params, shift)
            return self.method._grad(self.method._loss(self.closure, self._rng), self.params)
        finally:
            self.restore()

    def hvp(self, v, shift=None):
        method, mode = self.method, self.method._product_mode()
        pieces = hvps.FrozenPieces(self.params[0].device.type) if mode in ("fd", "check") else None
        try:
            if shift is not None:
                hvps.shift(self.params, shift)
            g = method._grad(method._loss(self.closure, self._rng, pieces), self.params,
                             create_graph=mode in ("exact", "check"))
            return method._hvp(self.closure, self._rng, pieces, self.params, g, v, mode)
        finally:
            self.restore()

    def restore(self):
        """Put the parameters back at W."""
        with torch.no_grad():
            torch._foreach_copy_(self.params, self._anchor)


def create(name, model, settings=None, *, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=False, steps_per_epoch=1,
           base="SGD", base_kwargs=None, **options):
    """Build method `name` (see `hero-bench list methods`) for `model`'s trainable parameters.

    The method's settings are OptimizerConfig's fields, given by name in `options` (radius=0.05,
    hessian_coef=100, hvp="exact", args={"alpha": 0.1}, ...: the method's defaults where absent) or
    whole as `settings` (an experiment's optimizer section); every value is checked here, by the rules
    on those fields. lr (0.1), momentum (0.9), weight_decay (5e-4) and nesterov (False) go to the base
    optimizer, `base` (a torch.optim class or its name, 'SGD'), with `base_kwargs`. `steps_per_epoch`
    turns hessian_warmup_epochs into steps (1: the warm-up counts steps).
    """
    if settings is None:
        known = [*(p for p in inspect.signature(create).parameters if p not in ("name", "model", "settings", "options")),
                 *(f.name for f in dataclasses.fields(OptimizerConfig) if f.name != "name")]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(f"unknown optimizer option {unknown[0]!r}; known: {', '.join(known)}")
        settings = validation.build(OptimizerConfig, {"name": name, **options}, "optimizer.")
    elif options:
        raise TypeError(f"create() takes settings or options, not both (got {', '.join(options)})")
    validation.check(settings, "optimizer.")
    check_args(name, settings.args)
    return Method(METHODS.get(name), model, settings, lr=lr, momentum=momentum, weight_decay=weight_decay,
                  nesterov=nesterov, steps_per_epoch=steps_per_epoch, base=base, base_kwargs=base_kwargs)


def check_args(name, args):
    """optimizer.args must be keyword arguments of method `name`'s own gradient function; a rule takes none."""
    rule = METHODS.get(name)
    if rule.gradient is None:
        if args:
            raise ConfigError(f"optimizer.args: method {name!r} is a rule and takes no arguments, got {', '.join(map(str, args))}")
        return
    check_keywords(rule.gradient, args, f"optimizer.args.{{}} is not an option of method {name!r}", skip=("step",))


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
