"""Tiny float64 models and their exact Hessians, for checking the Hessian estimators."""
import torch
from torch import nn
from torch.func import functional_call


def tiny_mlp(seed=0, hidden=4, scale=1.0):
    """3 → hidden → 2 tanh MLP with biases, in float64 (Hessian tests compare to 1e-8); every
    parameter multiplied by `scale`."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


def tiny_batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (n,), generator=g)


def exact_hessian(model, loss_fn, x, y):
    """The full Hessian of loss_fn(model(x), y) over the flattened parameters, by torch.autograd.functional."""
    names = [name for name, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    buffers = dict(model.named_buffers())

    def loss_of(flat):
        chunks = flat.split([p.numel() for p in params])
        state = {name: chunk.view_as(p) for name, chunk, p in zip(names, chunks, params)}
        return loss_fn(functional_call(model, {**state, **buffers}, (x,)), y)

    return torch.autograd.functional.hessian(loss_of, torch.cat([p.reshape(-1) for p in params]))
