"""The Ray Tune function trainable: hero_bench.train.run_trial with per-epoch tune.report and checkpoints.

The trial trains on the GPU Ray gave it (`ray.get_gpu_ids()`, passed to run_trial, which knows no
Ray), and every report records those ids (`gpu_ids`, e.g. "[0]"; "[]" for none) next to the device
the trial trained on (`device`).

A checkpoint is one file, `state.pt`, holding the trial's state (tensors and plain data), saved
every `sweep.checkpoint_every` epochs and after the last one; a retried or resumed trial continues
from it. It is loaded with torch.load(weights_only=True), so it can never run pickled code.
"""
import tempfile
from pathlib import Path

import ray
import torch
from ray import tune

from hero_bench import config as config_module
from hero_bench.sweep.space import trial_params
from hero_bench.train import run_trial
from hero_bench.trials import GPU_IDS, STATUS

STATE_FILE = "state.pt"


def trainable(params, base, recorded=None):
    """Train the trial Ray drew (`params`) of the experiment `base` (a Config).

    `recorded`: trial_id -> trials.csv row of trials that ended before the sweep was interrupted.
    Ray's own snapshot of trial statuses can lag behind that file, so Ray may start such a trial
    again on --resume; it is not trained again: it reports its recorded status and sweep metric once
    and ends, and trials.csv keeps its recorded row.
    """
    config = config_module.for_trial(base, trial_params(params))
    metric, every = config.sweep.metric, config.sweep.checkpoint_every
    row = (recorded or {}).get(tune.get_context().get_trial_id())
    if row is not None:
        # one result, so Ray's record of the trial carries its id (Ray adds it) and the sweep metric
        tune.report({STATUS: row[STATUS], metric: row.get(metric, float("nan"))})
        return

    gpu_ids = [str(i) for i in ray.get_gpu_ids()]

    def report(metrics, state):
        metrics[GPU_IDS] = f"[{', '.join(gpu_ids)}]"  # a list, never a number: no metric to average
        if metrics[STATUS] == "diverged":
            # Ray requires the sweep metric in every result; a diverged trial has no valid value,
            # and NaN is never chosen as best by Ray.
            metrics[metric] = float("nan")
        if state is None or not checkpoint_due(metrics["epoch"], every, config.train.total_epochs):
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / STATE_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    resume, checkpoint = None, tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_state(folder)
    run_trial(config, report=report, resume=resume, gpu_ids=gpu_ids)


def checkpoint_due(epoch, every, epochs):
    """A checkpoint every `every` epochs and after the last one."""
    return epoch % every == 0 or epoch == epochs


def load_state(folder):
    """A trial checkpoint's state. weights_only=True: tensors and plain data, never pickled code."""
    return torch.load(Path(folder) / STATE_FILE, weights_only=True)
