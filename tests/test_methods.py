"""The four methods: each gradient rule against an independent computation (docs/methods.md)."""
import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from hero_bench import methods, models
from hero_bench.errors import ConfigError, DivergedError


# A plain step that changes nothing: the gradient a method hands its base optimizer stays in p.grad.
FROZEN = dict(lr=0.0, momentum=0.0, weight_decay=0.0)


@functools.lru_cache
def digits():
    """scikit-learn's 8x8 digits, standardized, as (1797, 1, 8, 8) float32 and int64 labels."""
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1)
    return (x - x.mean()) / x.std(), torch.tensor(data.target)


def batches(count, size=32):
    """`count` consecutive digits batches, wrapping around the data set."""
    x, y = digits()
    order = torch.arange(count * size) % len(x)
    return [(x[i], y[i]) for i in order.split(size)]


class Abs(nn.Module):
    def forward(self, x):
        return x.abs()


def mlp(hidden=128, activation=nn.ReLU):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), activation(), nn.Linear(hidden, hidden), activation(),
                         nn.Linear(hidden, 10))


def convnet():
    """A small conv net with BatchNorm and biases: every kind of parameter HERO treats differently."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


def train(name, model_fn=convnet, steps=5, seed=0, **hyper):
    """The model after `steps` steps of method `name` on fixed digits batches."""
    torch.manual_seed(seed)
    model = model_fn()
    optimizer = methods.create(name, model, **hyper)
    for x, y in batches(steps):
        optimizer.step(lambda: F.cross_entropy(model(x), y))
    return model


def gradient(name, model, x, y, **hyper):
    """The gradient method `name` hands its base optimizer on one batch (W left unchanged)."""
    optimizer = methods.create(name, model, **FROZEN, **hyper)
    optimizer.step(lambda: F.cross_entropy(model(x), y))
    return [p.grad.clone() for p in model.parameters()]


def flat(tensors):
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def relative_difference(a, b):
    """max over state-dict entries (parameters and BatchNorm buffers) of ‖a − b‖ / ‖b‖."""
    a, b = a.state_dict(), b.state_dict()
    return max(((a[k].double() - b[k].double()).norm() / b[k].double().norm().clamp(min=1e-30)).item() for k in b)


def cosine(a, b):
    return (a @ b / (a.norm() * b.norm())).item()


# Edges of the (radius, hessian_coef) grid: hero and gradnorm reduce to sam and sgd.

def test_hero_with_zero_radius_matches_sgd():
    sgd = train("sgd")
    assert relative_difference(train("hero", radius=0.0, hessian_coef=5.0), sgd) < 1e-6
    assert relative_difference(train("hero", radius=0.5, hessian_coef=5.0), sgd) > 1e-3  # the check can fail


@pytest.mark.parametrize("adaptive", [True, False])
def test_hero_with_zero_hessian_coef_matches_sam(adaptive):
    radius = 0.5 if adaptive else 0.05
    sam = train("sam", radius=radius, adaptive=adaptive)
    assert relative_difference(train("hero", radius=radius, hessian_coef=0.0, adaptive=adaptive), sam) < 1e-6
    hero = train("hero", radius=radius, hessian_coef=500.0, adaptive=adaptive, hvp="exact")
    assert relative_difference(hero, sam) > 1e-4


def test_gradnorm_with_zero_hessian_coef_matches_sgd():
    sgd = train("sgd")
    assert relative_difference(train("gradnorm", hessian_coef=0.0), sgd) < 1e-6
    assert relative_difference(train("gradnorm", hessian_coef=0.1, hvp="exact"), sgd) > 1e-4


def test_extra_passes_replay_the_dropout_masks_of_the_first():
    def model_fn():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))

    sgd = train("sgd", model_fn)
    after_sgd = torch.rand(3)
    hero = train("hero", model_fn, radius=0.0, hessian_coef=5.0)
    assert relative_difference(hero, sgd) < 1e-6
    assert torch.equal(torch.rand(3), after_sgd)  # a step draws random numbers like a single pass


# Gradients in closed form and against finite differences of the objectives.

@pytest.mark.parametrize("hvp", ["exact", "fd"])
@pytest.mark.parametrize("adaptive", [True, False])
def test_quadratic_gradients_in_closed_form(adaptive, hvp):
    """L = ½ wᵀAw over one 3x4 Linear weight (n = 12): hero gives A(w+z) + 2γ A(Az)/n, gradnorm Aw + 2γ AAw."""
    torch.manual_seed(0)
    layer = nn.Linear(4, 3, bias=False).double()
    b = torch.randn(12, 12, dtype=torch.float64)
    a = b @ b.T / 12 + torch.eye(12, dtype=torch.float64)
    radius, gamma, n = 0.3, 0.7, 12
    w = layer.weight.detach().reshape(-1).clone()

    def closure():
        flat_w = layer.weight.reshape(-1)
        return 0.5 * flat_w @ a @ flat_w

    g = a @ w
    t = w.abs() if adaptive else torch.ones_like(w)
    z = radius * t * t * g / ((t * g).norm() + 1e-12)
    expected = {"hero": a @ (w + z) + 2 * gamma * a @ (a @ z) / n, "gradnorm": g + 2 * gamma * a @ (a @ w)}
    for name, want in expected.items():
        optimizer = methods.create(name, layer, radius=radius, hessian_coef=gamma, adaptive=adaptive, hvp=hvp, **FROZEN)
        optimizer.step(closure)
        got = layer.weight.grad.reshape(-1)
        assert torch.allclose(got, want, rtol=1e-10 if hvp == "exact" else 1e-5, atol=0), name


def objective_gradient(objective, params, step=1e-5):
    """Central finite differences of objective() over every parameter entry (float64)."""
    grads = []
    for p in params:
        g = torch.zeros_like(p)
        for i in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[i] += step
            up = objective().item()
            with torch.no_grad():
                p.view(-1)[i] -= 2 * step
            down = objective().item()
            with torch.no_grad():
                p.view(-1)[i] += step
            g.view(-1)[i] = (up - down) / (2 * step)
        grads.append(g)
    return grads


@pytest.mark.parametrize("hvp", ["exact", "fd"])
def test_gradients_equal_finite_differences_of_the_objectives(hvp):
    """float64 MLP with BatchNorm and biases: hero's gradient is ∇ of L(W+z) + γ Σ_l ‖g_l(W+z) − sg[g_l(W)]‖²/n_l
    with z and g(W) frozen, gradnorm's is ∇ of L(W) + γ‖g(W)‖²."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3)).double()
    params = list(model.parameters())
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    radius, gamma = 0.5, 5.0
    penalized = [0, 4]  # Linear weights among [weight, bias, bn.weight, bn.bias, weight, bias]

    def loss():
        return F.cross_entropy(model(x), y)

    def grad():
        return torch.autograd.grad(loss(), params)

    g_w = [g.detach() for g in grad()]
    norm = flat([p.abs() * g for p, g in zip(params, g_w)]).norm()
    z = [radius * p.detach() ** 2 * g / (norm + 1e-12) for p, g in zip(params, g_w)]

    def hero_objective():
        with torch.no_grad():
            for p, zi in zip(params, z):
                p.add_(zi)
        g = grad()
        value = loss() + gamma * sum(((g[i] - g_w[i]) ** 2).mean() for i in penalized)
        with torch.no_grad():
            for p, zi in zip(params, z):
                p.sub_(zi)
        return value

    def gradnorm_objective():
        return loss() + gamma * flat(grad()).pow(2).sum()

    for name, objective in (("hero", hero_objective), ("gradnorm", gradnorm_objective)):
        want = flat(objective_gradient(objective, params))
        got = flat(gradient(name, model, x, y, radius=radius, hessian_coef=gamma, hvp=hvp))
        first_order = flat(gradient("sam" if name == "hero" else "sgd", model, x, y, radius=radius))
        assert (got - want).norm() / want.norm() < 1e-5, name
        assert (got - first_order).norm() / want.norm() > 1e-2, name  # the Hessian term is really there


# Finite-difference Hessian-vector products against exact ones.

def hessian_terms(model, x, y):
    """Hessian terms H(W+z)D of hero and H(W)g of gradnorm with fd and exact, recovered from the
    gradients as (gradient − first-order gradient) / 2γ with a large γ."""
    gamma = 1e4
    terms = {}
    for name, first_order in (("hero", "sam"), ("gradnorm", "sgd")):
        base = flat(gradient(first_order, model, x, y))
        for hvp in ("fd", "exact"):
            terms[name, hvp] = (flat(gradient(name, model, x, y, hessian_coef=gamma, hvp=hvp)) - base) / (2 * gamma)
    return terms


def sgd_steps(model, x, y, steps, batch=32, lr=0.05):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for i in range(steps):
        j = (i * batch) % (len(x) - batch)
        optimizer.zero_grad()
        F.cross_entropy(model(x[j:j + batch]), y[j:j + batch]).backward()
        optimizer.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("architecture", ["mlp", "resnet20"])
def test_fd_hessian_term_matches_exact_at_init_and_after_training(architecture, dtype):
    torch.manual_seed(0)
    x, y = digits()
    if architecture == "resnet20":  # digits upsampled to 3x16x16; float64 convolutions are slow on CPU
        x = F.interpolate(x, size=16, mode="bilinear").repeat(1, 3, 1, 1)
        model, train_steps, batch = models.create("resnet20", (3, 16, 16), 10), 10, 32 if dtype == torch.float32 else 8
    else:
        model, train_steps, batch = mlp(), 100, 64
    model, x = model.to(dtype), x.to(dtype)
    for stage in ("init", "trained"):
        terms = hessian_terms(model, x[:batch], y[:batch])
        for name in ("hero", "gradnorm"):
            assert cosine(terms[name, "fd"], terms[name, "exact"]) >= 0.99, (stage, name)
        sgd_steps(model, x[batch:], y[batch:], train_steps, batch)


def test_fd_holds_every_piecewise_linear_op_on_its_piece():
    """In-place ReLU, ReLU6, leaky ReLU, hardtanh and max pooling on 512 digits: fd's step crosses
    many kinks (cosine about 0.06 if they are not held), yet matches exact."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU6(), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(),
        nn.Linear(128, 64), nn.LeakyReLU(0.1), nn.Linear(64, 64), nn.Hardtanh(-0.5, 0.5), nn.Linear(64, 10),
    )
    x, y = digits()
    terms = hessian_terms(model, x[:512], y[:512])
    for name in ("hero", "gradnorm"):
        assert cosine(terms[name, "fd"], terms[name, "exact"]) >= 0.99, name


def test_fd_under_bfloat16_autocast_steps_by_the_autocast_precision():
    """A float32-sized step vanishes in bfloat16 rounding (cosine about 0.05); bfloat16's ε gives
    a rough product, short of auto's 0.99, so auto switches to exact at its first check."""
    torch.manual_seed(0)
    model = mlp()
    (x, y), = batches(1, size=64)
    optimizer = methods.create("hero", model, hvp="auto", **FROZEN)

    def closure():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return F.cross_entropy(model(x).float(), y)

    optimizer.step(closure)
    assert 0.9 <= optimizer.hvp_check_cosine < 0.99
    assert optimizer.hvp_fallback_step == 0


# auto: fd checked against exact.

def test_auto_switches_to_exact_for_good_when_fd_fails_and_records_the_step():
    """|u| activations have kinks fd does not hold fixed; on a full digits batch its step crosses
    enough of them to spoil the product, on 64 samples it does not."""
    x, y = digits()
    torch.manual_seed(0)
    model = mlp(activation=Abs)
    optimizer = methods.create("hero", model, hvp="auto", hvp_check_every=3, lr=0.01)
    schedule = [64] * 6 + [len(x)] + [64] * 3  # checks at steps 0, 3 (64 samples) and 6 (all)
    counts = []
    for size in schedule:
        optimizer.step(lambda: F.cross_entropy(model(x[:size]), y[:size]))
        counts.append((optimizer.grad_evals, optimizer.hvp_evals))
    assert optimizer.hvp_fallback_step == 6
    assert optimizer.hvp_check_cosine < 0.99
    assert counts[5] == (18, 2)  # fd: 3 gradients a step, exact products only at checks
    assert counts[6] == (21, 3)  # the failing check
    assert counts[9] == (27, 6)  # exact from then on: 2 gradients and 1 product a step


def test_auto_where_fd_holds_never_switches_and_costs_within_10_percent_of_fd():
    runs = {}
    for hvp in ("fd", "auto"):
        torch.manual_seed(0)
        model = mlp()
        optimizer = methods.create("hero", model, hvp=hvp, hvp_check_every=10, lr=0.02)
        for x, y in batches(40, size=64):
            optimizer.step(lambda: F.cross_entropy(model(x), y))
        runs[hvp] = optimizer, model
    auto, fd = runs["auto"][0], runs["fd"][0]
    assert auto.hvp_fallback_step is None and auto.hvp_check_cosine >= 0.99
    assert (fd.grad_evals, fd.hvp_evals) == (120, 0)
    assert (auto.grad_evals, auto.hvp_evals) == (120, 4)  # checks at steps 0, 10, 20, 30
    exact_product_cost = 2  # a double-backward product costs about two gradients
    assert auto.grad_evals + exact_product_cost * auto.hvp_evals <= 1.1 * fd.grad_evals
    assert relative_difference(runs["auto"][1], runs["fd"][1]) < 1e-3


@pytest.mark.parametrize("name, hvp, counts", [
    ("sgd", "auto", (1, 0)), ("sam", "auto", (2, 0)),
    ("gradnorm", "fd", (2, 0)), ("gradnorm", "exact", (1, 1)), ("gradnorm", "auto", (2, 1)),
    ("hero", "fd", (3, 0)), ("hero", "exact", (2, 1)), ("hero", "auto", (3, 1)),
])
def test_one_step_costs_the_documented_gradient_and_product_counts(name, hvp, counts):
    torch.manual_seed(0)
    model = convnet()
    optimizer = methods.create(name, model, hvp=hvp)  # auto checks on its first Hessian step
    (x, y), = batches(1)
    optimizer.step(lambda: F.cross_entropy(model(x), y))
    assert (optimizer.grad_evals, optimizer.hvp_evals) == counts


def test_hessian_every_k_takes_full_steps_every_kth_step_and_sam_steps_between():
    def steps(plan):
        torch.manual_seed(0)
        model = convnet()
        for (x, y), (name, hessian_every) in zip(batches(len(plan)), plan):
            optimizer = methods.create(name, model, hvp="exact", momentum=0.0, hessian_every=hessian_every)
            optimizer.step(lambda: F.cross_entropy(model(x), y))
        return model

    every_two = train("hero", steps=4, hvp="exact", momentum=0.0, hessian_every=2)
    alternating = steps([("hero", 1), ("sam", 1), ("hero", 1), ("sam", 1)])
    assert relative_difference(every_two, alternating) < 1e-6
    assert relative_difference(every_two, train("hero", steps=4, hvp="exact", momentum=0.0)) > 1e-6


# BatchNorm, schedulers, checkpoints.

@pytest.mark.parametrize("name, hvp", [("sgd", "auto"), ("sam", "auto"), ("gradnorm", "fd"), ("gradnorm", "exact"),
                                       ("hero", "fd"), ("hero", "exact"), ("hero", "auto")])
def test_batchnorm_running_stats_after_one_step_equal_one_plain_forward_pass(name, hvp):
    torch.manual_seed(0)
    model = convnet()
    plain = copy.deepcopy(model)
    (x, y), = batches(1)
    optimizer = methods.create(name, model, hvp=hvp)
    optimizer.step(lambda: F.cross_entropy(model(x), y))
    plain(x)
    buffers = dict(model.named_buffers())
    for key, value in plain.named_buffers():
        assert torch.equal(buffers[key], value), key


def test_sgd_equals_torch_sgd_under_an_lr_scheduler():
    torch.manual_seed(0)
    model = convnet()
    reference = copy.deepcopy(model)
    hyper = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    optimizer = methods.create("sgd", model, **hyper)
    torch_sgd = torch.optim.SGD(reference.parameters(), **hyper)
    schedulers = [torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.1) for o in (optimizer, torch_sgd)]
    for x, y in batches(5):
        optimizer.step(lambda: F.cross_entropy(model(x), y))
        torch_sgd.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        torch_sgd.step()
        for scheduler in schedulers:
            scheduler.step()
    assert optimizer.base.param_groups[0]["lr"] == pytest.approx(0.1 * 0.1 ** 2)
    assert relative_difference(model, reference) < 1e-6


def test_state_dict_round_trip_continues_the_same_trajectory():
    data = batches(6)

    def run(model, optimizer, part):
        for x, y in part:
            optimizer.step(lambda: F.cross_entropy(model(x), y))

    torch.manual_seed(0)
    model = convnet()
    optimizer = methods.create("hero", model, hvp="auto", hvp_check_every=2)
    run(model, optimizer, data[:3])
    saved = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
    run(model, optimizer, data[3:])

    torch.manual_seed(1)
    restored = convnet()
    restored.load_state_dict(saved[0])
    resumed = methods.create("hero", restored, hvp="auto", hvp_check_every=2)
    resumed.load_state_dict(saved[1])
    assert resumed.param_groups is resumed.base.param_groups  # schedulers still reach the base optimizer
    assert (resumed.steps, resumed.grad_evals, resumed.hvp_evals, resumed.next_hvp_check) == (3, 9, 2, 4)
    run(restored, resumed, data[3:])
    assert relative_difference(restored, model) < 1e-6
    assert resumed.state_dict()["method"] == optimizer.state_dict()["method"]


def test_any_torch_optimizer_can_be_the_base():
    torch.manual_seed(0)
    model = convnet()
    optimizer = methods.create("sam", model, base="Adam", lr=1e-3, base_kwargs={"betas": (0.8, 0.99)})
    assert isinstance(optimizer.base, torch.optim.Adam) and optimizer.param_groups[0]["betas"] == (0.8, 0.99)
    (x, y), = batches(1)
    before = copy.deepcopy(model)
    optimizer.step(lambda: F.cross_entropy(model(x), y))
    assert relative_difference(model, before) > 0


# Bad input.

@pytest.mark.parametrize("hyper, message", [
    (dict(radius=-0.1), "optimizer.radius"),
    (dict(hessian_coef=-1.0), "optimizer.hessian_coef"),
    (dict(hessian_coef=float("nan")), "optimizer.hessian_coef"),
    (dict(hvp="second"), "optimizer.hvp must be one of auto, fd, exact"),
    (dict(hessian_every=0), "optimizer.hessian_every"),
    (dict(hvp_check_every=0), "optimizer.hvp_check_every"),
    (dict(hessian_every=1.5), "optimizer.hessian_every"),
    (dict(adaptive="yes"), "optimizer.adaptive"),
    (dict(base="NoSuchOptimizer"), "optimizer.base"),
    (dict(nesterov=True, momentum=0.0), "optimizer.base SGD"),
    (dict(rho=0.1), "unknown optimizer option 'rho'"),
])
def test_bad_hyperparameters_raise_config_error_naming_the_field(hyper, message):
    with pytest.raises(ConfigError, match=message):
        methods.create("hero", convnet(), **hyper)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown method 'adam'; known: gradnorm, hero, sam, sgd"):
        methods.create("adam", convnet())


@pytest.mark.parametrize("result, message", [
    (lambda loss: loss.expand(3), r"scalar batch loss .* got \(3,\)"),
    (lambda loss: loss.item(), "scalar batch loss .* got float"),
    (lambda loss: loss.detach(), "does not depend on any trainable parameter"),
])
def test_closure_must_return_the_scalar_loss(result, message):
    model = convnet()
    (x, y), = batches(1)
    with pytest.raises(ValueError, match=message):
        methods.create("hero", model).step(lambda: result(F.cross_entropy(model(x), y)))
    with pytest.raises(ValueError, match="needs step\\(closure\\)"):
        methods.create("sgd", model).step()


@pytest.mark.parametrize("bad_call", [1, 2, 3])
def test_nan_loss_in_any_pass_raises_diverged_with_weights_unchanged(bad_call):
    torch.manual_seed(0)
    model = convnet()
    before = copy.deepcopy(model.state_dict())
    (x, y), = batches(1)
    optimizer = methods.create("hero", model, hvp="fd")  # passes: W, W + z, W + z + h D̂
    calls = []

    def closure():
        calls.append(1)
        loss = F.cross_entropy(model(x), y)
        return loss * float("nan") if len(calls) == bad_call else loss

    with pytest.raises(DivergedError, match="loss is nan at step 0"):
        optimizer.step(closure)
    for key, value in model.state_dict().items():
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):  # the pass at W ran
            assert torch.equal(value, before[key]), key
