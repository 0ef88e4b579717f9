"""Single-trial training: config -> (dataset, model, method) -> per-epoch reports -> final metrics.

`run_trial` knows nothing of Ray or W&B. The sweep hooks in through `report(metrics, state)`,
called once after every epoch with a checkpointable snapshot of the trial (whether to save it is the
caller's decision), and through `resume` (such a snapshot) to continue a trial where it left off. The metric keys are listed in docs/metrics.md.
"""
import copy
import dataclasses
import logging
import math
import os
import resource
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hero_bench import data as datasets
from hero_bench import memory, methods, metrics, models
from hero_bench.config import Config, from_dict
from hero_bench.errors import ConfigError, DivergedError, HeroBenchError

# logging, not warnings.warn: Python shows a repeated warning once per process, and a Ray worker
# runs trial after trial; the GPU warning is owed to each of them
log = logging.getLogger(__name__)


# Fault injection for tests (never part of an experiment): with HERO_BENCH_FAIL_AT_EPOCH=k in its
# environment, a trial raises InjectedFault once, at epoch k of a fresh start (a resumed one goes on).
FAIL_AT_EPOCH = "HERO_BENCH_FAIL_AT_EPOCH"


class InjectedFault(RuntimeError):
    """Raised where HERO_BENCH_FAIL_AT_EPOCH says, so tests can exercise retries from checkpoints."""


def resolve_device(name, gpu_ids=None):
    """The torch device a trial trains on, for `train.device` = name (auto | cpu | cuda).

    `gpu_ids`: the GPUs a scheduler (a Ray sweep) gave this trial, named as CUDA_VISIBLE_DEVICES names
    them, or None when no scheduler assigns GPUs (`hero-bench train`). Given an assignment, the trial
    trains on its first GPU, and `auto` on the CPU when it is empty: never on a GPU it was not given
    (Ray leaves every GPU visible to a trial that asked for none). A trial given a GPU on a machine
    where torch finds no CUDA device trains on the CPU under `auto`, and the log says so.
    """
    cuda = torch.cuda.is_available()
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" and not cuda:
        raise ConfigError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if gpu_ids is None:
        return torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    if not gpu_ids:
        if name == "cuda":
            raise ConfigError("train.device is 'cuda' but this trial was given no GPU; set sweep.resources_per_trial.gpu above 0, or train.device: auto")
        return torch.device("cpu")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not cuda:
        log.warning("hero-bench: warning: this trial was given GPU %s (CUDA_VISIBLE_DEVICES=%s) but torch finds no CUDA device "
                    "(a CPU-only torch build, or no NVIDIA driver on this node): it trains on the CPU, and its device column says cpu",
                    ",".join(map(str, gpu_ids)), visible)
        return torch.device("cpu")
    return torch.device("cuda", cuda_index(gpu_ids[0], visible))


def cuda_index(gpu_id, visible):
    """torch's index of the GPU named `gpu_id`: its position in CUDA_VISIBLE_DEVICES (`visible`: GPU
    indices or UUIDs, comma-separated), or `gpu_id` itself when that is unset. Ray sets
    CUDA_VISIBLE_DEVICES to a trial's own GPUs, so its first GPU is cuda:0 in the trial's process."""
    if visible is None:
        return int(gpu_id)
    names = [name.strip() for name in visible.split(",")]
    if str(gpu_id) not in names:
        raise HeroBenchError(f"this trial was given GPU {gpu_id}, which CUDA_VISIBLE_DEVICES={visible!r} does not list")
    return names.index(str(gpu_id))


def make_scheduler(optimizer, train):
    """Learning-rate schedule over epochs (stepped once per epoch, as in the authors' code)."""
    if train.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train.total_epochs)
    if train.schedule == "step":
        milestones = sorted({max(1, round(f * train.total_epochs)) for f in train.lr_steps})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=train.lr_decay)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


def build(config, device):
    """The three things a trial is made of, from a validated config."""
    d, m, o, t = config.data, config.model, config.optimizer, config.train
    dataset = datasets.load(
        d.name, seed=t.seed, device=device, root=d.root, download=d.download,
        val_fraction=d.val_fraction, label_noise=d.label_noise, label_noise_kind=d.label_noise_kind, **d.args,
    )
    memory.check(m, t.batch_size, dataset, device)  # before the model is built: refuses one too big for the device
    torch.manual_seed(t.seed)  # model initialisation is a function of the seed alone
    model = models.create(m.name, dataset.input_shape, dataset.num_classes, **m.args).to(device)
    optimizer = methods.create(o.name, model, o, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                               nesterov=t.nesterov, steps_per_epoch=math.ceil(len(dataset.train_y) / t.batch_size))
    return dataset, model, optimizer


def precision(train, device):
    """The context a trial's forward passes run in: bfloat16 autocast for `train.precision` bf16."""
    if train.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision is 'bf16' but this CUDA device does not support bfloat16; use fp32")
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if train.precision == "bf16" else nullcontext


def dry_run(config, device):
    """What a trial of `config` does on `device` before its first epoch (its data loaded, its model
    sized and built, its optimizer made), then one optimizer step on one batch: raises what such a
    trial would raise there. A loss that is NaN from the first step is no mistake: the trial diverges."""
    autocast = precision(config.train, device)
    dataset, model, optimizer = build(config, device)
    batch = config.train.batch_size
    one_batch = dataclasses.replace(dataset, train_x=dataset.train_x[:batch], train_y=dataset.train_y[:batch])
    try:
        train_one_epoch(model, optimizer, one_batch, config, torch.Generator().manual_seed(config.train.seed), autocast)
    except DivergedError:
        pass


def describe(config):
    """One line naming the trial: its method with the knobs it uses, data, model, epochs, lr, seed."""
    radius, coef = methods.METHODS.get(config.optimizer.name).knobs(config.optimizer.radius, config.optimizer.hessian_coef)
    d, t = config.data, config.train
    noise = f", label noise {d.label_noise:g} ({d.label_noise_kind})" if d.label_noise else ""
    epochs = f"{t.total_epochs} epochs" + (f" ({t.epochs} x {t.compute_factor})" if t.compute_factor > 1 else "")
    return (f"training {config.optimizer.name} (radius {radius:g}, hessian_coef {coef:g}) on {d.name}{noise} with "
            f"{config.model.name}: {epochs}, lr {t.lr:g}, seed {t.seed}")


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux and bytes on macOS
    scale = 2**20 if sys.platform == "darwin" else 2**10
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def train_one_epoch(model, optimizer, dataset, config, generator, autocast, bar=None):
    """One pass over the training set; returns (mean loss, accuracy in percent) on the training labels."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for inputs, targets in dataset.train_batches(config.train.batch_size, generator):
        first = {}

        def closure():
            with autocast():
                outputs = model(inputs)
                loss = F.cross_entropy(outputs.float(), targets)
            first.setdefault("outputs", outputs.detach())  # the unperturbed pass, for train accuracy
            return loss

        loss = optimizer.step(closure)
        total_loss += loss.item() * len(targets)
        correct += (first["outputs"].argmax(1) == targets).sum().item()
        seen += len(targets)
        if bar is not None:
            bar.update(1)
    return total_loss / seen, 100.0 * correct / seen


def checkpoint_state(model, optimizer, scheduler, generator, epoch, history, result):
    """A snapshot (deep copy: state_dict() tensors alias the live ones) to resume this trial from.
    `result` (the metrics so far) lets a resume from the last epoch's snapshot report them again."""
    return copy.deepcopy({
        "epoch": epoch,
        "result": result,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng_torch": torch.get_rng_state(),
        "rng_generator": generator.get_state(),
        "history": history,
    })


def run_trial(config, report=None, resume=None, progress=False, gpu_ids=None):
    """Train one (configuration, seed) and return its final metrics.

    `config`: a Config or a nested dict (validated here). `gpu_ids`: the GPUs a scheduler gave the
    trial (see resolve_device). `report(metrics, state)`: called once
    after each epoch with a snapshot of the trial (None after a diverged epoch), and once with None
    if a resumed trial had nothing left to train. `resume`: such a snapshot to continue from. A NaN/inf loss ends the trial with status 'diverged' and
    the epoch it happened in; it is not an exception for the caller.
    """
    if not isinstance(config, Config):
        config = from_dict(config)
    train = config.train
    if train.threads:
        torch.set_num_threads(train.threads)
    device = resolve_device(train.device, gpu_ids)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # what names no index ("cuda") lands on this trial's GPU too
    autocast = precision(train, device)

    dataset, model, optimizer = build(config, device)
    scheduler = make_scheduler(optimizer, train)
    generator = torch.Generator().manual_seed(train.seed)
    start_epoch, history = 0, []
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        torch.set_rng_state(resume["rng_torch"])
        generator.set_state(resume["rng_generator"])
        start_epoch, history = resume["epoch"], list(resume["history"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    result = {"status": "completed", "label_noise_realized": dataset.label_noise_realized}
    if resume is not None:
        result.update(resume["result"])
    result["resumed_from_epoch"] = start_epoch
    result["device"] = str(device)  # this run's, also when resumed elsewhere
    batches_per_epoch = math.ceil(len(dataset.train_y) / train.batch_size)
    if progress:
        print(describe(config), flush=True)
    epochs = train.total_epochs
    # progress on a terminal: a bar redrawn in place; anywhere else (a pipe, a file): a line per epoch
    live = progress and sys.stderr.isatty()
    bar = tqdm(total=(epochs - start_epoch) * batches_per_epoch, desc=config.name, disable=not live, leave=False)
    for epoch in range(start_epoch + 1, epochs + 1):
        if os.environ.get(FAIL_AT_EPOCH) == str(epoch) and start_epoch == 0:
            raise InjectedFault(f"injected fault at epoch {epoch} ({FAIL_AT_EPOCH})")
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            train_loss, train_acc = train_one_epoch(model, optimizer, dataset, config, generator, autocast, bar)
        except DivergedError as exc:
            result.update(status="diverged", diverged_epoch=epoch, error=str(exc), epochs_done=len(history))
            result.update(cost_metrics(optimizer, dataset, history, device))
        else:
            scheduler.step()
            seconds = time.perf_counter() - started
            # test accuracy every epoch is reported and summarized, never used to choose anything
            accuracies = {split: metrics.accuracy(model, x, y, train.eval_batch_size)
                          for split, x, y in (("val_acc", dataset.val_x, dataset.val_y),
                                              ("test_acc", dataset.test_x, dataset.test_y))}
            history.append({"seconds": seconds, "cpu_s": time.process_time() - cpu_started, **accuracies})
            result.update({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, **accuracies,
                           "lr": optimizer.param_groups[0]["lr"], "epoch_time_s": seconds})
            if epoch == epochs:
                result.update(final_metrics(model, optimizer, dataset, config, history, device))
        diverged = result["status"] == "diverged"
        if not diverged:
            bar.set_postfix_str(f"epoch {epoch}/{epochs}, val_acc {result['val_acc']:.1f}")
            if progress and not live:
                print(f"epoch {epoch}/{epochs}: train_loss {train_loss:.4f}, val_acc {result['val_acc']:.2f}, "
                      f"test_acc {result['test_acc']:.2f}, {seconds:.2f} s", flush=True)
        if report is not None:
            state = None if diverged else checkpoint_state(model, optimizer, scheduler, generator, epoch, history, result)
            report(dict(result), state)
        if diverged:
            break
    bar.close()
    result["epochs_done"] = len(history)
    if start_epoch == epochs and report is not None:
        report(dict(result), None)  # resumed from the last epoch's snapshot: nothing left to train
    return result


def cost_metrics(optimizer, dataset, history, device):
    """Gradient evaluations, products and times of the epochs trained (`history`, see run_trial)."""
    train_time = sum(epoch["seconds"] for epoch in history)
    seconds = train_time / len(history) if history else float("nan")
    return {
        "grad_evals": optimizer.grad_evals,
        "hvp_evals": optimizer.hvp_evals,
        "hvp_fallback_step": optimizer.hvp_fallback_step,
        "time_per_epoch_s": seconds,
        "samples_per_s": len(dataset.train_y) / seconds if history else float("nan"),
        "peak_mem_mb": peak_memory_mb(device),
        "train_time_s": train_time,
        "cpu_time_s": sum(epoch["cpu_s"] for epoch in history),
    }


def epoch_summary(history):
    """Early-stopping numbers from the per-epoch accuracies of `history` (one dict per epoch, in order):

    best_val_epoch        the first epoch (1-based) with the highest validation accuracy
    test_acc_at_best_val  test accuracy at that epoch: a legitimate early-stopping result
    max_test_acc          the highest test accuracy of any epoch: chosen by test, for comparison with
                          the HERO authors' reporting only, never to choose anything
    """
    best = max(range(len(history)), key=lambda i: (history[i]["val_acc"], -i))
    return {"best_val_epoch": best + 1, "test_acc_at_best_val": history[best]["test_acc"],
            "max_test_acc": max(epoch["test_acc"] for epoch in history)}


def final_metrics(model, optimizer, dataset, config, history, device):
    """Training accuracies on clean and trained labels, generalization gap, early-stopping numbers,
    the `evaluate:` metrics and cost (test_acc is the last epoch's)."""
    batch = config.train.eval_batch_size
    out = {
        "train_acc_clean": metrics.accuracy(model, dataset.train_x, dataset.train_y_clean, batch),
        "train_acc_noisy": metrics.accuracy(model, dataset.train_x, dataset.train_y, batch),
    }
    out["gen_gap"] = out["train_acc_clean"] - history[-1]["test_acc"]
    out.update(epoch_summary(history))
    started, cpu_started = time.perf_counter(), time.process_time()
    out.update(metrics.evaluate(model, dataset, config.evaluate, config.train.seed))
    out["eval_time_s"] = time.perf_counter() - started
    out.update(cost_metrics(optimizer, dataset, history, device))
    out["cpu_time_s"] += time.process_time() - cpu_started
    return out
