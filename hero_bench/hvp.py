"""Hessian-vector products for the methods' Hessian terms: exact, and a finite difference of gradients.

`exact`: H v = ∇(g · sg[v]), double backpropagation through the graph of g (built with create_graph).

`finite_difference`: H(x) v ≈ (g(x + h v̂) − g(x)) ‖v‖ / h with v̂ = v / ‖v‖, one extra gradient and
no second-order graph. Plain finite differences fail on ReLU networks: the pass at x + h v̂ pushes
some pre-activations across their kink, and each crossing adds a jump to the gradient difference
that does not shrink with h (cosine against the exact product 0.1-0.7 on ResNet-20 at init, 0.30 on
the digits MLP at γ = 500). The pass at x + h v̂ therefore runs under `FrozenPieces`, which holds
every piecewise-linear op on the linear piece it took in the pass at x: the same function the exact
product differentiates. In float32 the worst 1 − cosine against a float64 exact product is then
about 2e-5 (step size: see `step_size`).
"""
import inspect
import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

# Finite-difference step h = FD_STEP_SCALE · √ε · (1 + ‖x‖); `step_size` says how it was chosen.
FD_STEP_SCALE = 0.01


def norm(tensors):
    """The global 2-norm of a list of tensors."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


def cosine(a, b):
    """Cosine of two lists of tensors, in float64."""
    dot = sum((x.double() * y.double()).sum() for x, y in zip(a, b))
    return (dot / (norm([x.double() for x in a]) * norm([y.double() for y in b]) + 1e-300)).item()


@torch.no_grad()
def shift(params, direction, scale=1.0):
    """params += scale · direction, skipping None entries of direction."""
    moved = [(p, d) for p, d in zip(params, direction) if d is not None]
    torch._foreach_add_([p for p, _ in moved], [d for _, d in moved], alpha=scale)


def exact(params, g, v):
    """H v = ∇(g · sg[v]) by double backpropagation through g's graph; None entries of v count as 0."""
    g_dot_v = sum((gi * vi).sum() for gi, vi in zip(g, v) if vi is not None)
    return list(torch.autograd.grad(g_dot_v, params, materialize_grads=True))


def step_size(params, pieces):
    """h = c √ε (1 + ‖x‖), ε the machine epsilon of the parameters (or of the autocast dtype the
    recorded pass ran under), c = FD_STEP_SCALE.

    The usual balance of truncation error (grows with h) against rounding (grows as ε/h), each weight
    moving by about c√ε of the parameter scale. Measured in float32 against a float64 exact product
    (1 − cosine, hero and gradnorm directions, digits MLP and ResNet-20 with BatchNorm, at init and
    trained): c = 0.001: up to 2e-3 (rounding); 0.01: at most 2e-5; 0.1: 4e-4 and 0.3: 4e-3
    (truncation, ResNet-20 at init). In float64 every c in 0.01..100 agrees to 1e-5. Central
    differences (c = 0.01 on ε^⅓) reach 1e-6 but cost a fourth gradient per hero step, so the
    one-sided form is used. In bfloat16 autocast the cosine is about 0.95-0.98 (MLP, ResNet-20), not
    enough for auto's check, which then switches to exact.
    """
    dtypes = {p.dtype for p in params} | ({pieces.autocast_dtype} if pieces.autocast_dtype else set())
    eps = max(torch.finfo(dtype).eps for dtype in dtypes)
    return FD_STEP_SCALE * math.sqrt(eps) * (1 + norm(params).item())


def finite_difference(gradient_at, params, g, v, pieces):
    """H(x) v ≈ (g(x + h v̂) − g(x)) ‖v‖ / h, where g = g(x) and `pieces` was recorded in the pass at x.

    `gradient_at(pieces)` returns the gradient at the current parameters with the forward pass
    replaying `pieces`. The parameters are left at x + h v̂: the caller restores them.
    """
    v_norm = norm([vi for vi in v if vi is not None]).item()
    h = step_size(params, pieces)
    shift(params, v, h / v_norm)  # to x + h v̂
    g_h = gradient_at(pieces.replay())
    return torch._foreach_mul(torch._foreach_sub(g_h, [gi.detach() for gi in g]), v_norm / h)


class FrozenPieces(TorchFunctionMode):
    """Holds every piecewise-linear op of a forward pass on the linear piece it took in a recorded pass.

    The exact product differentiates a ReLU network on the linear piece it is on (the second
    derivative of a kink is 0 almost everywhere). Recording (no pieces given) runs the ops as usual
    and keeps the piece each took: the gate u > 0 of ReLU, the slope of leaky ReLU, the clip pattern
    of hardtanh and ReLU6, the winners of 1-d and 2-d max pooling. Replaying (the pieces of a
    recording; same batch, same sequence of ops) evaluates each op as its recorded piece, u·slope +
    offset or a gather at the recorded winners, which at x equals the op itself. Kinks of other ops
    (abs, clamp, max, ...) are left as they are; auto's check catches the damage they do.
    """

    def __init__(self, device_type, pieces=None):
        super().__init__()
        self.device_type = device_type
        self.replaying = pieces is not None
        self.pieces = pieces if self.replaying else []
        self.next = 0
        self.autocast_dtype = None  # the recorded pass's autocast dtype, if it ran under autocast

    def replay(self):
        return FrozenPieces(self.device_type, self.pieces)

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
            if kind == "max_pool":
                pool = _POOL_WITH_INDICES[func]
                out, winners = pool(**{**a, "return_indices": True})
                self.pieces.append(winners)
                return (out, winners) if a["return_indices"] else out
            self.pieces.append(_linear_piece(kind, a))  # before the op: an in-place op overwrites u
            return func(*args, **kwargs)
        if self.next == len(self.pieces):
            raise RuntimeError("the forward pass took other piecewise-linear ops than the recorded one; "
                               "finite differences need the same ops in the same order (use hvp='exact')")
        piece = self.pieces[self.next]
        self.next += 1
        if kind == "max_pool":
            dims = 2 if func is F.max_pool2d else 1
            out = u.flatten(-dims).gather(-1, piece.flatten(-dims)).view_as(piece)
            return (out, piece) if a["return_indices"] else out
        slope, offset = piece
        out = u.mul_(slope) if a["inplace"] else u * slope
        return out if offset is None else out.add_(offset)


_PIECEWISE = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", torch.Tensor.relu: "relu",
              torch.Tensor.relu_: "relu", F.leaky_relu: "leaky_relu", F.hardtanh: "hardtanh",
              F.relu6: "hardtanh", F.max_pool1d: "max_pool", F.max_pool2d: "max_pool"}
_POOL_WITH_INDICES = {F.max_pool1d: F.max_pool1d_with_indices, F.max_pool2d: F.max_pool2d_with_indices}
_SIGNATURES = {F.relu: inspect.signature(F.relu), F.leaky_relu: inspect.signature(F.leaky_relu),
               F.hardtanh: inspect.signature(F.hardtanh), F.relu6: inspect.signature(F.relu6),
               **{f: inspect.signature(pool) for f, pool in _POOL_WITH_INDICES.items()}}


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
