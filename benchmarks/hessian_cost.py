"""Time to the top Hessian eigenvalue: hero-bench's power iteration against PyHessian's, same model, data, process.

Setup: ResNet-20 (hero_bench.models, CIFAR shape, 10 classes) in eval mode, its BatchNorm running
statistics set from the batch, one batch of 256 random N(0, 1) images with random labels, mean
cross-entropy, relative tolerance 1e-3, at most 100 iterations, 2 threads.
- hero-bench: metrics.hessian_top_eigenvalue (power iteration, gradient graph built once and reused);
- PyHessian 0.1 (pip install pyhessian): hessian(model, criterion, data=(x, y), cuda=False).eigenvalues(),
  the same power iteration and stopping rule, with the same single-batch graph reuse;
- for reference, metrics.hessian_top_k(k=1) (Lanczos) at the same tolerance.
First the cost of one Hessian-vector product (HVP) in each implementation, on the same vector; then
each whole run (graph building included), alternating, `--repeats` times, the best time of each
counting, the one least disturbed by other processes. Wall and process CPU seconds are both shown:
a busy machine inflates CPU time less. HVPs are counted by wrapping the functions that compute them.
The two power iterations start from different random vectors (PyHessian draws its own from torch's
global generator), so they can need different numbers of HVPs.

`--evaluate` also times the whole end-of-trial `metrics.evaluate` (default `evaluate:` section) on
digits/mlp; `time_evaluate` is the function to reuse.
Run: python benchmarks/hessian_cost.py [--repeats N] [--seed S] [--evaluate]
"""
import argparse
import contextlib
import importlib
import time

import torch
import torch.nn.functional as F

from hero_bench import metrics, models

THREADS = 2
SAMPLES = 256
TOL = 1e-3
MAX_ITER = 100


def resnet20_problem(seed=0):
    """ResNet-20 in eval mode with BatchNorm statistics of the batch, and a batch of random images and labels."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(SAMPLES, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (SAMPLES,), generator=generator)
    torch.manual_seed(seed)
    model = models.create("resnet20", (3, 32, 32), 10)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # cumulative average: one pass sets the statistics of the batch
    with torch.no_grad():
        model.train()(x)
    return model.eval(), x, y


def pyhessian_module():
    return importlib.import_module("pyhessian.hessian")  # the module; the package re-exports a class of that name


@contextlib.contextmanager
def counting(owner, name):
    """Count the calls of owner.name inside the block; yields a list whose length is the count."""
    function, calls = getattr(owner, name), []

    def counted(*args, **kwargs):
        calls.append(None)
        return function(*args, **kwargs)

    setattr(owner, name, counted)
    try:
        yield calls
    finally:
        setattr(owner, name, function)


def timed(run):
    """run()'s value, its wall-clock seconds and its process CPU seconds."""
    start, cpu = time.perf_counter(), time.process_time()
    value = run()
    return value, time.perf_counter() - start, time.process_time() - cpu


def hero_bench_power(model, x, y, seed):
    def run():
        return metrics.hessian_top_eigenvalue(model, F.cross_entropy, [(x, y)], tol=TOL, max_iter=MAX_ITER, seed=seed)

    with counting(metrics.HessianOperator, "__call__") as calls:
        return (*timed(run), len(calls))


def hero_bench_lanczos(model, x, y, seed):
    def run():
        return metrics.hessian_top_k(model, F.cross_entropy, [(x, y)], 1, tol=TOL, max_iter=MAX_ITER, seed=seed)[0]

    with counting(metrics.HessianOperator, "__call__") as calls:
        return (*timed(run), len(calls))


def pyhessian_power(model, x, y, seed):
    ph = pyhessian_module()

    def run():
        computer = ph.hessian(model, F.cross_entropy, data=(x, y), cuda=False)
        return computer.eigenvalues(maxIter=MAX_ITER, tol=TOL)[0][0]

    torch.manual_seed(seed)  # PyHessian draws its start vector from the global generator
    with counting(ph, "hessian_vector_product") as calls:
        try:
            return (*timed(run), len(calls))
        finally:
            model.zero_grad(set_to_none=True)  # PyHessian leaves the gradient, with its graph, in .grad


def product_cost(model, x, y, repeats=3):
    """Best (wall, CPU) seconds of one HVP on an already built gradient graph, per implementation,
    alternating, on the same vector: the implementations' cost, whatever their start vectors."""
    ph = pyhessian_module()
    ours = metrics.HessianOperator(model, F.cross_entropy, [(x, y)])
    theirs = ph.hessian(model, F.cross_entropy, data=(x, y), cuda=False)
    v = torch.randn(ours.dim)
    v_theirs = [chunk.view_as(p) for chunk, p in zip(v.split([p.numel() for p in theirs.params]), theirs.params)]
    runs = {
        "hero-bench": lambda: ours(v),
        "PyHessian": lambda: ph.hessian_vector_product(theirs.gradsH, theirs.params, v_theirs),
    }
    best = {}
    for _ in range(repeats):
        for name, run in runs.items():
            _, wall, cpu = timed(run)
            best[name] = min(best.get(name, (wall, cpu)), (wall, cpu))
    model.zero_grad(set_to_none=True)
    return best


def compare(repeats=1, seed=0):
    model, x, y = resnet20_problem()
    print(f"ResNet-20, {SAMPLES} random samples, eval mode, tol {TOL:g}, {THREADS} threads", flush=True)
    cost = product_cost(model, x, y)
    for name, (wall, cpu) in cost.items():
        print(f"  one HVP, {name:10s}: {wall:.2f} s wall, {cpu:.2f} s CPU (best of 3)", flush=True)
    ratio = cost["PyHessian"][0] / cost["hero-bench"][0]
    print(f"  HVP time ratio PyHessian / hero-bench: {ratio:.2f}", flush=True)

    runs = {
        "hero-bench power": hero_bench_power,
        "PyHessian power": pyhessian_power,
        "hero-bench Lanczos": hero_bench_lanczos,
    }
    best = {}
    for _ in range(repeats):
        for name, run in runs.items():
            value, wall, cpu, products = run(model, x, y, seed)
            print(f"  {name:18s} {value:.6g}  {wall:7.2f} s wall  {cpu:7.2f} s CPU  {products} HVPs", flush=True)
            if name not in best or wall < best[name][1]:
                best[name] = (value, wall, cpu, products)
    reference, reference_wall, reference_cpu, _ = best["PyHessian power"]
    print(f"time to the top eigenvalue, best of {repeats} (start vector seed {seed}):")
    for name, (value, wall, cpu, products) in best.items():
        print(
            f"  {name:18s} {value:.6g}  rel. diff to PyHessian {abs(value - reference) / abs(reference):.2e}  "
            f"{wall:.2f} s, {products} HVPs  speed-up vs PyHessian {reference_wall / wall:.2f}x wall, "
            f"{reference_cpu / cpu:.2f}x CPU"
        )
    return best


def time_evaluate(dataset="digits", model="mlp", evaluate_cfg=None, seed=0):
    """Seconds of one `metrics.evaluate` call (default `evaluate:` section unless given) on `model` built
    for `dataset` (weights as initialized: the cost hardly depends on training), and its results."""
    from hero_bench import data

    ds = data.load(dataset, seed=seed)
    torch.manual_seed(seed)
    net = models.create(model, ds.input_shape, ds.num_classes)
    results, seconds, _ = timed(lambda: metrics.evaluate(net, ds, evaluate_cfg or {}, seed))
    return seconds, results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seed of both start vectors")
    parser.add_argument("--evaluate", action="store_true", help="also time metrics.evaluate on digits/mlp")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    compare(args.repeats, args.seed)
    if args.evaluate:
        seconds, results = time_evaluate()
        print(f"metrics.evaluate (defaults) on digits/mlp: {seconds:.2f} s, {len(results)} metrics")


if __name__ == "__main__":
    main()
