"""What each method computes, as data: its rule, and the family a configuration of it belongs to.

A `Rule` says whether a method takes its gradient at the perturbed point W + z, and along which
direction its Hessian term differentiates (none, the gradient g, or HERO's gradient difference D);
one generic step (hero_bench.methods) carries out any rule. A method the two flags cannot say gives
its own `gradient` function instead (docs/methods.md, "A method of your own"). Torch-free: the
results side reads method families without importing torch.
"""
from dataclasses import dataclass
from typing import Callable

from hero_bench.registry import Registry, call_problem


@dataclass(frozen=True)
class Rule:
    """What a method does with a batch.

    name: the method's name in `optimizer.name`.
    perturbs: it takes the gradient at W + z (and so uses the radius ρ).
    hessian: the direction v of the Hessian term 2γ H v: None (no term), "g" (the gradient, at W) or
        "D" (the gradient difference g(W + z) − g(W), per penalized tensor divided by its size).
    objective: the objective in words, for `hero-bench list` and the docs.
    radius, hessian_coef: the method's defaults for ρ and γ (0 where it does not use the knob).
    gradient: for a method the flags cannot say, `gradient(step, **optimizer.args)` returning the
        gradient to apply at W (hero_bench.methods.Step gives it what it needs); None for a rule.
    """

    name: str
    perturbs: bool
    hessian: str | None
    objective: str
    radius: float = 0.0
    hessian_coef: float = 0.0
    gradient: Callable | None = None

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


def rule_problem(rule):
    """Why `rule` cannot be a method (METHODS' check): it is no Rule, or its gradient function cannot
    be called as the generic step calls it, gradient(step, **optimizer.args); None when it can."""
    if not isinstance(rule, Rule):
        return f"a method is a hero_bench.rules.Rule, got {type(rule).__name__}"
    return call_problem(rule.gradient, args=("step",)) if rule.gradient is not None else None


METHODS = Registry("method", check=rule_problem)


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
    is not registered, or a method with a gradient of its own, is its own family.
    """
    if name not in METHODS:
        return name
    rule = METHODS.get(name)
    acts = rule.effective(radius, hessian_coef)
    if rule.gradient is not None or acts == (rule.perturbs, rule.hessian):
        return name
    rules = (METHODS.get(other) for other in METHODS.names())
    return next((other.name for other in rules if other.gradient is None and (other.perturbs, other.hessian) == acts), name)


def family_name(method, radius, hessian_coef, compute_factor=1):
    """The family of a configuration: the method (optimizer.name, ρ, γ) computes (see `family`), so the
    (ρ, γ) grid's edges count as sgd and sam; trained for k > 1 times the epochs (train.compute_factor)
    it is a family of its own, `{method}_{k}x`: e.g. sgd_3x, SGD given the gradient evaluations of HERO."""
    name = family(method, radius, hessian_coef)
    return name if compute_factor == 1 else f"{name}_{compute_factor:g}x"


def is_family(name):
    """Whether `name` can be a family: a registered method, or one trained k times as long (`sgd_3x`)."""
    method, _, factor = name.rpartition("_")
    return name in METHODS or (method in METHODS and factor.endswith("x") and factor[:-1].isdigit() and int(factor[:-1]) > 1)
