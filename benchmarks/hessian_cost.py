"""Cost of the Hessian metrics: hero-bench against PyHessian 0.1, same model, data and process.

    python benchmarks/hessian_cost.py [--repeats 3] [--threads 2] [--cases lenet5 resnet20 mlp]
                                      [--parts eig trace density hutchpp] [--tols 1e-2] [--probes 16]
                                      [--epochs-lenet5 5] [--epochs-resnet20 3] [--epochs-mlp 20]
                                      [--density-runs 1] [--density-steps-lenet5 100] [--density-steps-resnet20 20]

Cases: a small CNN without BatchNorm (lenet5 on digits, 1x8x8), resnet20 (3x32x32 synthetic Gaussian
classes, 10 classes, 2048 training samples) and the quickstart's mlp (digits), each at
initialization (BatchNorm statistics of the sample) and after a few epochs of SGD (lr 0.05, momentum
0.9, batch 128). H is the Hessian of the mean cross-entropy over 256 training samples (one batch,
gradient graph reused: PyHessian's single-batch mode), model in eval mode, 2 threads (--threads).

- eig: time and Hessian-vector products (HVPs) to λ_max, each value checked against a reference from
  SciPy's ARPACK (eigsh, tol 1e-6) on the same HVPs: hero-bench's hessian_top_eigenvalue (Lanczos
  from the unit gradient plus a random vector) and PyHessian's hessian(...).eigenvalues() (power
  iteration from torch's global generator) at tolerance 1e-3 (PyHessian's default, and hero-bench's
  before it became 1e-2; hero-bench's bounds the error, PyHessian's the change between iterations)
  and 1e-2, hero-bench also at each of --tols (default 1e-2, its default); and hero-bench's Lanczos
  from a random vector alone at 1e-3 (what the gradient in the start saves);
- trace: hessian_trace against PyHessian's trace() at the same number of Rademacher probes
  (PyHessian's own stopping rule turned off);
- density: hessian_density against PyHessian's density() at the same runs and steps. PyHessian calls
  torch.eig, removed from PyTorch; this script supplies it (eigh of the symmetric tridiagonal,
  the same values) and nothing else;
- hutchpp (not by default): the spread of Hutchinson and of Hutch++ trace estimates at equal HVPs
  (--probes and twice that) over --spread-repeats seeds: what chose Hutchinson.
Also the cost of one HVP in each library on the same vector. Runs alternate between libraries,
`--repeats` rounds, each starting with the next one (start vectors seeded with the round); medians,
and ratios of medians (hero-bench / PyHessian: below 1 is faster). OpenMP threads sleep while waiting
(OMP_WAIT_POLICY=PASSIVE), as in step_cost.py: spinning threads distort timings on shared cores.
"""
import argparse
import contextlib
import importlib
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP runtime

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy.sparse.linalg import LinearOperator, eigsh  # noqa: E402

from hero_bench import data, hessian, models  # noqa: E402

THREADS = 2
SAMPLES = 256
TOL = 1e-3
MAX_ITER = 100
CASES = {  # name: (model, model arguments, dataset, dataset arguments)
    "lenet5": ("lenet5", {}, "digits", {}),
    "resnet20": ("resnet20", {}, "synthetic", {"input_shape": [3, 32, 32], "num_samples": 2048, "num_test": 100}),
    "mlp": ("mlp", {"hidden": [128, 128]}, "digits", {}),  # the quickstart's model
}


def pyhessian_module():
    module = importlib.import_module("pyhessian.hessian")  # the module; the package re-exports a class of that name

    def eig(matrix, eigenvectors=True):  # PyHessian's density() calls torch.eig, which now only raises
        values, vectors = torch.linalg.eigh(matrix)  # its matrix is symmetric tridiagonal
        return torch.stack([values, torch.zeros_like(values)], dim=1), vectors

    torch.eig = eig
    return module


def problem(case, epochs, seed=0):
    """(model in eval mode, x, y): `case` trained `epochs` epochs (0: as initialized, BatchNorm
    statistics of the sample), and the Hessian sample of 256 training examples."""
    name, model_args, dataset, args = CASES[case]
    ds = data.load(dataset, seed=seed, **args)
    torch.manual_seed(seed)
    model = models.create(name, ds.input_shape, ds.num_classes, **model_args)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for inputs, targets in ds.train_batches(128, generator):
            optimizer.zero_grad()
            F.cross_entropy(model(inputs), targets).backward()
            optimizer.step()
    (x, y), = hessian.hessian_sample(ds, SAMPLES, SAMPLES, seed)
    if epochs == 0:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = None  # cumulative average: one pass sets the statistics of the sample
        with torch.no_grad():
            model.train()(x)
    model.zero_grad(set_to_none=True)
    return model.eval(), x, y


def reference_eigenvalue(model, x, y):
    """λ_max by SciPy's ARPACK (Lanczos with implicit restarts, tol 1e-6) on hero-bench's HVPs."""
    with hessian.hessian_operator(model, F.cross_entropy, [(x, y)]) as hvp:
        dtype = hvp.params[0].dtype

        def matvec(v):
            return hvp(torch.from_numpy(np.ascontiguousarray(v).reshape(-1)).to(dtype)).double().numpy()

        operator = LinearOperator((hvp.dim, hvp.dim), matvec=matvec, dtype=np.float64)
        return float(eigsh(operator, k=1, which="LA", tol=1e-6, return_eigenvectors=False)[0])


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


def measured(run, owner, name):
    """(value, wall seconds, HVPs) of run(), counting the calls of owner.name."""
    with counting(owner, name) as calls:
        start = time.perf_counter()
        value = run()
        return value, time.perf_counter() - start, len(calls)


def ours(run):
    return measured(run, hessian.HessianOperator, "__call__")


def theirs(run, model):
    try:
        return measured(run, pyhessian_module(), "hessian_vector_product")
    finally:
        model.zero_grad(set_to_none=True)  # PyHessian leaves the gradient, with its graph, in .grad


def eig_runs(model, x, y, tols):
    ph, batches = pyhessian_module(), [(x, y)]

    def hero_bench(seed, tol=TOL):
        return ours(lambda: hessian.hessian_top_eigenvalue(model, F.cross_entropy, batches, tol=tol,
                                                           max_iter=MAX_ITER, seed=seed))

    def random_start(seed):
        def run():
            with hessian.hessian_operator(model, F.cross_entropy, batches) as hvp:
                start = hvp.random_vector(torch.Generator().manual_seed(seed))
                return hessian.top_eigenvalues(hvp, 1, tol=TOL, max_iter=MAX_ITER, start=start)[0]
        return ours(run)

    def pyhessian(seed, tol=TOL):
        torch.manual_seed(seed)  # PyHessian draws its start vector from the global generator
        return theirs(lambda: ph.hessian(model, F.cross_entropy, data=(x, y), cuda=False).eigenvalues(
            maxIter=MAX_ITER, tol=tol)[0][0], model)

    return {"hero-bench": hero_bench, "hero-bench, random start": random_start, "PyHessian": pyhessian,
            **{f"hero-bench, tol {tol:g}": (lambda tol: lambda seed: hero_bench(seed, tol))(tol) for tol in tols},
            "PyHessian, tol 1e-2": lambda seed: pyhessian(seed, 1e-2)}


def trace_runs(model, x, y, probes):
    ph = pyhessian_module()

    def hero_bench(seed):
        return ours(lambda: hessian.hessian_trace(model, F.cross_entropy, [(x, y)], probes=probes, seed=seed))

    def pyhessian(seed):
        torch.manual_seed(seed)
        return theirs(lambda: float(np.mean(ph.hessian(model, F.cross_entropy, data=(x, y), cuda=False).trace(
            maxIter=probes, tol=-np.inf))), model)

    return {"hero-bench": hero_bench, "PyHessian": pyhessian}


def density_runs(model, x, y, runs, steps):
    ph = pyhessian_module()

    def hero_bench(seed):
        return ours(lambda: hessian.hessian_density(model, F.cross_entropy, [(x, y)], runs=runs, steps=steps,
                                                    seed=seed))

    def pyhessian(seed):
        torch.manual_seed(seed)
        return theirs(lambda: ph.hessian(model, F.cross_entropy, data=(x, y), cuda=False).density(
            iter=steps, n_v=runs), model)

    return {"hero-bench": hero_bench, "PyHessian": pyhessian}


def hutchpp_trace(hvp, products, generator):
    """Hutch++ (Meyer et al. 2021) with `products` HVPs: the trace of H on the span of a sketch H·S (k
    = products/3 Rademacher columns) exactly, plus Hutchinson on the rest with the remaining probes
    projected off that span."""
    k = products // 3
    sketch = torch.stack([hvp(hvp.random_vector(generator, rademacher=True)) for _ in range(k)], dim=1)
    q = torch.linalg.qr(sketch).Q
    low_rank = sum(torch.dot(q[:, i], hvp(q[:, i])).item() for i in range(k))
    rest = []
    for _ in range(products - 2 * k):
        z = hvp.random_vector(generator, rademacher=True)
        z -= q @ (q.T @ z)
        rest.append(torch.dot(z, hvp(z)).item())
    return low_rank + statistics.mean(rest)


def report_trace_spread(label, model, x, y, products, repeats):
    """Spread of Hutchinson and Hutch++ at equal HVPs over `repeats` seeds, against 1000 Hutchinson probes."""
    with hessian.hessian_operator(model, F.cross_entropy, [(x, y)]) as hvp:
        reference = hessian.hutchinson_trace(hvp, 1000, torch.Generator().manual_seed(10**6))
        estimators = {"Hutchinson": hessian.hutchinson_trace, "Hutch++": hutchpp_trace}
        values = {name: [estimate(hvp, products, torch.Generator().manual_seed(seed)) for seed in range(repeats)]
                  for name, estimate in estimators.items()}
    print(f"{label}: trace estimators at {products} HVPs, {repeats} seeds, reference {reference:.5g} (1000 probes)")
    for name, v in values.items():
        print(f"  {name:11s} mean {statistics.mean(v):.5g}  std {statistics.stdev(v):.4g}  "
              f"std / reference {statistics.stdev(v) / abs(reference):.3f}", flush=True)


def alternate(runs, repeats):
    """name -> [(value, wall, HVPs)] over `repeats` rounds, the implementations taking turns, each
    round starting one further down the list (no position in the round favours one of them)."""
    results, names = {name: [] for name in runs}, list(runs)
    for seed in range(repeats):
        for name in names[seed % len(names):] + names[:seed % len(names)]:
            results[name].append(runs[name](seed))
    return results


def median(results, index):
    return statistics.median(r[index] for r in results)


def product_cost(model, x, y, repeats):
    """Median wall seconds of one HVP on an already built gradient graph, per library, on the same vector."""
    ph = pyhessian_module()
    ours_op = hessian.HessianOperator(model, F.cross_entropy, [(x, y)])
    theirs_op = ph.hessian(model, F.cross_entropy, data=(x, y), cuda=False)
    v = torch.randn(ours_op.dim, generator=torch.Generator().manual_seed(0))
    v_theirs = [chunk.view_as(p) for chunk, p in zip(v.split([p.numel() for p in theirs_op.params]), theirs_op.params)]
    runs = {"hero-bench": lambda: ours_op(v),
            "PyHessian": lambda: ph.hessian_vector_product(theirs_op.gradsH, theirs_op.params, v_theirs)}
    times = {name: [] for name in runs}
    for _ in range(repeats + 1):  # the first round warms up
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def report_eig(label, model, x, y, repeats, tols):
    reference = reference_eigenvalue(model, x, y)
    results = alternate(eig_runs(model, x, y, tols), repeats)
    print(f"{label}: λ_max (tol {TOL:g} unless named), reference {reference:.6g} (ARPACK, tol 1e-6)")
    base = results["PyHessian"]
    for name, rows in results.items():
        errors = [abs(value - reference) / abs(reference) for value, _, _ in rows]
        print(f"  {name:25s} time {median(rows, 1):7.3f} s ({min(r[1] for r in rows):.3f}-{max(r[1] for r in rows):.3f})  "
              f"HVPs {median(rows, 2):4.1f} ({min(r[2] for r in rows)}-{max(r[2] for r in rows)})  max rel. error "
              f"{max(errors):.1e}  time ratio to PyHessian {median(rows, 1) / median(base, 1):.2f}", flush=True)
    return results


def report_same_count(label, what, results):
    base = results["PyHessian"]
    print(f"{label}: {what}")
    for name, rows in results.items():
        print(f"  {name:25s} time {median(rows, 1):7.3f} s  HVPs {median(rows, 2):5.1f}  "
              f"time ratio to PyHessian {median(rows, 1) / median(base, 1):.2f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--parts", nargs="+", choices=["eig", "trace", "density", "hutchpp"],
                        default=["eig", "trace", "density"])
    parser.add_argument("--epochs-lenet5", type=int, default=5)
    parser.add_argument("--epochs-resnet20", type=int, default=3)
    parser.add_argument("--epochs-mlp", type=int, default=20)
    parser.add_argument("--spread-repeats", type=int, default=40, help="seeds of the hutchpp part")
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-2],
                        help="hero-bench's λ_max also at these tolerances (eig); its default is 1e-2")
    parser.add_argument("--probes", type=int, default=16, help="Hutchinson probes of the trace comparison")
    parser.add_argument("--density-runs", type=int, default=1)
    parser.add_argument("--density-steps-lenet5", type=int, default=100)
    parser.add_argument("--density-steps-resnet20", type=int, default=20)
    parser.add_argument("--density-steps-mlp", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{SAMPLES} samples, {args.threads} thread(s), {args.repeats} repetitions, medians")
    for case in args.cases:
        epochs = getattr(args, f"epochs_{case}")
        for state, trained in (("at init", 0), (f"after {epochs} epochs", epochs)):
            model, x, y = problem(case, trained)
            label = f"{case} {state}"
            if trained:  # HVP cost, trace and density do not depend on the training state
                cost = product_cost(model, x, y, args.repeats)
                print(f"{label}: one HVP  hero-bench {cost['hero-bench']:.4f} s  PyHessian {cost['PyHessian']:.4f} s  "
                      f"ratio {cost['hero-bench'] / cost['PyHessian']:.2f}", flush=True)
            if "eig" in args.parts:
                report_eig(label, model, x, y, args.repeats, args.tols)
            if "hutchpp" in args.parts:
                for products in (args.probes, 2 * args.probes):
                    report_trace_spread(label, model, x, y, products, args.spread_repeats)
            if trained and "trace" in args.parts:
                report_same_count(label, f"trace, {args.probes} probes",
                                  alternate(trace_runs(model, x, y, args.probes), args.repeats))
            if trained and "density" in args.parts:
                steps = getattr(args, f"density_steps_{case}")
                report_same_count(label, f"density, {args.density_runs} run(s) x {steps} steps",
                                  alternate(density_runs(model, x, y, args.density_runs, steps), args.repeats))


if __name__ == "__main__":
    main()
