"""End-of-trial evaluation cost as a multiple of one training epoch, for any experiment file.

    python benchmarks/eval_cost.py experiments/quickstart.yaml [--set key=value ...] [--repeats 3]

Builds the experiment's base trial (its file with the `--set` overrides, as `hero-bench train` runs
it), trains it for train.epochs epochs timing each epoch, then times on the trained model, `--repeats`
times in turn: the validation and test accuracy a trial computes after every epoch, the whole
end-of-trial evaluation (hero_bench.metrics.evaluate), each evaluator of METRICS, and the Hessian's
parts alone (λ_max, trace, density when configured) next to all of them
from one setup. Prints medians and each as a multiple of the median epoch. Threads: train.threads.
It imports `counting` from hessian_cost.py, next to it in benchmarks/
"""
import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP runtime

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from hessian_cost import counting  # noqa: E402  (benchmarks/, next to this script)

from hero_bench import config as config_module  # noqa: E402
from hero_bench import experiment_files  # noqa: E402
from hero_bench import hessian, metrics, train, trials  # noqa: E402


def trained(config):
    """(model, dataset, epoch seconds) of the trial `config` trained for its epochs."""
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    dataset, model, optimizer = train.build(config, train.resolve_device(config.train.device))
    scheduler = train.make_scheduler(optimizer, config.train)
    generator = torch.Generator().manual_seed(config.train.seed)
    epochs = []
    for _ in range(config.train.epochs):
        start = time.perf_counter()
        train.train_one_epoch(model, optimizer, dataset, config, generator, train.nullcontext)
        scheduler.step()
        epochs.append(time.perf_counter() - start)
    return model, dataset, epochs


def hessian_parts(model, dataset, config):
    """name -> run() of the Hessian estimators alone and together, as evaluate_hessian calls them."""
    cfg, seed = config.evaluate.hessian, config.train.seed
    batches = hessian.hessian_sample(dataset, cfg.samples, cfg.batch_size, seed)
    density = (cfg.density.runs, cfg.density.steps) if cfg.density else None
    common = dict(tol=cfg.tol, max_iter=cfg.max_iter, probes=cfg.probes, seed=seed, keep_graph=len(batches) == 1)

    def part(**which):
        return lambda: hessian.hessian_curvature(model, F.cross_entropy, batches, **{**common, **which})

    parts = {"hessian: λ_max alone": part(top_eigenvalue=True, trace=False),
             "hessian: trace alone": part(top_eigenvalue=False, trace=True)}
    if density:
        parts["hessian: density alone"] = part(top_eigenvalue=False, trace=False, density=density)
    parts["hessian: all, one setup"] = part(top_eigenvalue=cfg.top_eigenvalue, trace=cfg.trace, density=density)
    return parts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = config_module.load(experiment_files.resolve(args.experiment), args.set)
    model, dataset, epochs = trained(config)
    epoch = statistics.median(epochs)
    splits = ((dataset.val_x, dataset.val_y), (dataset.test_x, dataset.test_y))
    runs = {"every epoch: val + test acc": lambda: [metrics.accuracy(model, x, y, config.train.eval_batch_size)
                                                    for x, y in splits],
            "evaluate (all evaluators)": lambda: metrics.evaluate(model, dataset, config.evaluate, config.train.seed)}
    runs.update({f"evaluator {name}": (lambda fn: lambda: fn(model, dataset, config.evaluate, config.train.seed))(
        metrics.METRICS.get(name)) for name in metrics.METRICS.names()})
    runs.update(hessian_parts(model, dataset, config))
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    with counting(hessian.HessianOperator, "__call__") as products:
        runs["hessian: λ_max alone"]()
    radius, coef = trials.knobs(config)
    print(f"{args.experiment} {' '.join(args.set)}: {config.data.name}/{config.model.name}, {config.optimizer.name} "
          f"(radius {radius:g}, hessian_coef {coef:g}), {torch.get_num_threads()} thread(s)")
    print(f"  one training epoch: median {epoch:.3f} s over {len(epochs)} epochs; λ_max took {len(products)} "
          f"Hessian-vector products, the trace {config.evaluate.hessian.probes}")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"  {name:28s} {median:7.3f} s  = {median / epoch:5.2f} epochs  (median of {args.repeats})")


if __name__ == "__main__":
    main()
