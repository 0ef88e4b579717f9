"""Time per optimizer step of every method, and its ratio to SGD, on two workloads.

    python benchmarks/step_cost.py [--device cuda] [--steps 20] [--threads 2]

Workloads: the mlp on digits (batch 64) and resnet20 on 3x32x32 inputs (batch 128). Each row is its
own copy of the same initial model with its optimizer, stepping on one fixed batch; the rows take
turns one step at a time (`--warmup` rounds untimed, then `--steps` timed). Each row reports the
median wall-clock time of its timed steps and the mean process CPU time (all threads; steadier on
shared cores, and amortized over steps that differ: with hessian_every=4 one step in four is a hero
step, the others sam steps). auto's fd-vs-exact check runs on its first step (inside the warm-up)
and then every 50 steps, so its timed steps are fd steps; the "check step" row (a check on every
step) gives the cost of one check, to amortize over 50. The last row is a plain loss.backward() + torch.optim.SGD
loop, to show what the step(closure) wrapper itself costs.

OpenMP threads that spin while waiting made every op 10-100x slower on cores shared with other
jobs, so this script asks them to sleep instead (OMP_WAIT_POLICY=PASSIVE unless already set).
"""
import argparse
import copy
import functools
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP runtime

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from hero_bench import data, methods, models  # noqa: E402

ROWS = [  # label, method, hyperparameters
    ("sgd", "sgd", {}),
    ("sam", "sam", {}),
    ("gradnorm fd", "gradnorm", {"hvp": "fd"}),
    ("gradnorm exact", "gradnorm", {"hvp": "exact"}),
    ("hero fd", "hero", {"hvp": "fd"}),
    ("hero exact", "hero", {"hvp": "exact"}),
    ("hero auto", "hero", {"hvp": "auto"}),
    ("hero auto, check step", "hero", {"hvp": "auto", "hvp_check_every": 1}),
    ("hero auto, hessian_every=4", "hero", {"hvp": "auto", "hessian_every": 4}),
]


def workloads(device):
    digits = data.load("digits", device=device)
    yield "mlp / digits, batch 64", models.create("mlp", digits.input_shape, 10), digits.train_x[:64], digits.train_y[:64]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(128, 3, 32, 32, generator=generator).to(device)
    y = torch.randint(0, 10, (128,), generator=generator).to(device)
    yield "resnet20 / 3x32x32, batch 128", models.create("resnet20", (3, 32, 32), 10), x, y


def timed(step, device):
    """(wall seconds, process CPU seconds) of one call of step()."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def closure(model, x, y):
    return lambda: F.cross_entropy(model(x), y)


def torch_sgd_step(model, x, y):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step():
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
          f"{args.steps} timed steps after {args.warmup} warm-up steps\n")
    header = (f"{'workload':32s} {'method':28s} {'wall ms':>9s} {'x sgd':>6s} {'cpu ms':>9s} {'x sgd':>6s} "
              f"{'grads/step':>10s} {'hvps/step':>9s}\n{'':61s} {'(median)':>16s} {'(mean)':>16s}")
    print(header)
    print("-" * len(header.splitlines()[0]))
    for workload, model, x, y in workloads(device):
        runs = []  # (label, step, optimizer): every row its own copy of the same initial model
        for label, name, hyper in ROWS:
            replica = copy.deepcopy(model).to(device).train()
            optimizer = methods.create(name, replica, lr=0.01, **hyper)
            runs.append((label, functools.partial(optimizer.step, closure(replica, x, y)), optimizer))
        runs.append(("torch.optim.SGD + backward()", torch_sgd_step(copy.deepcopy(model).to(device), x, y), None))
        times = {label: [] for label, _, _ in runs}
        for i in range(args.warmup + args.steps):  # round-robin, so changing load hits every row alike
            for label, step, _ in runs:
                timing = timed(step, device)
                if i >= args.warmup:
                    times[label].append(timing)
        total = args.warmup + args.steps
        for label, _, optimizer in runs:
            walls, cpus = zip(*times[label])
            wall, cpu = statistics.median(walls), statistics.mean(cpus)
            if label == "sgd":
                sgd_wall, sgd_cpu = wall, cpu
            counts = f"{optimizer.grad_evals / total:10.2f} {optimizer.hvp_evals / total:9.2f}" if optimizer else ""
            print(f"{workload:32s} {label:28s} {1000 * wall:9.2f} {wall / sgd_wall:6.2f} "
                  f"{1000 * cpu:9.2f} {cpu / sgd_cpu:6.2f} {counts}")
        print(flush=True)


if __name__ == "__main__":
    main()
