"""The Ray Tune function trainable: hero_bench.train.run_trial with per-epoch tune.report and checkpoints.

The trial trains on the GPU Ray gave it (`ray.get_gpu_ids()`, passed to run_trial, which knows no
Ray), and every report records those ids (`gpu_ids`, e.g. "[0]"; "[]" for none) next to the device
the trial trained on (`device`).

A checkpoint is a folder of two files, saved every `sweep.checkpoint_every` epochs and after the
last one: `state.pt`, the trial's state (tensors and plain data), and `trial.json`, which says whose
it is (the sweep's id, the trial's id and swept values, the epoch) so that --resume can find it
without Ray's pickled experiment state. A retried trial continues from its last checkpoint, a
resumed one from the checkpoint --resume found for it. state.pt is loaded with
torch.load(weights_only=True), so it can never run pickled code.

Reports reach Ray in batches when epochs are short. Each tune.report is a round trip through the
sweep's driver (the trial waits while the driver handles the result, whose CPU the trials share):
on the quickstart's epochs of 0.09 s, 8 ms of waiting per epoch and as much again of the driver's
time. So an epoch is handed to Ray at once only when Ray needs it then: a checkpoint is due, an
ASHA rung lies there (hero_bench.sweep.rungs), the trial ends (its last epoch, a divergence), or
`sweep.report_every_s` seconds (default 2) have passed since the last report; the epochs in between
travel with the next report, in its EARLIER list, oldest first. The report's own metrics are its
epoch's, as before, so Ray, ASHA and the trials table see the same values at the same epochs; the
trials table's history.csv and W&B unpack every epoch (`reported_epochs`). Epochs longer than
report_every_s are all reported as they end, and report_every_s 0 reports every epoch so.
"""
import json
import pickle
import tempfile
import time
from pathlib import Path

import ray
import torch
from ray import tune

from hero_bench import config as config_module
from hero_bench.errors import HeroBenchError
from hero_bench.sweep.console import quiet_trial
from hero_bench.sweep.rungs import rung_epochs
from hero_bench.sweep.space import trial_id as logical_trial_id
from hero_bench.sweep.space import trial_params
from hero_bench.train import run_trial
from hero_bench.trials import GPU_IDS, STATUS

STATE_FILE, TRIAL_FILE = "state.pt", "trial.json"
EARLIER = "earlier_epochs"  # a report's key: the epochs since the previous report, oldest first


class UnsafeCheckpointError(HeroBenchError):
    """A checkpoint holds more than tensors and plain data, so it was not loaded."""


def trainable(params, base, sweep_id, checkpoints=None, verbose=False):
    """Train the trial Ray drew (`params`) of the experiment `base` (a Config).

    `sweep_id`: the sweep's id, written into every checkpoint's trial.json.
    `checkpoints`: trial id -> checkpoint (path or URI) a resumed trial continues from.
    """
    quiet_trial(verbose)
    trial_id = logical_trial_id(params, tune.get_context().get_trial_id())
    swept = trial_params(params)
    config = config_module.for_trial(base, swept)
    metric, every, interval = config.sweep.metric, config.sweep.checkpoint_every, config.sweep.report_every_s
    gpu_ids = [str(i) for i in ray.get_gpu_ids()]
    rungs, pending, last_report = set(rung_epochs(config)), [], time.monotonic()

    def report(metrics, state):
        nonlocal last_report
        metrics[GPU_IDS] = f"[{', '.join(gpu_ids)}]"  # a list, never a number: no metric to average
        if metrics[STATUS] == "diverged":
            # Ray requires the sweep metric in every result; a diverged trial has no valid value,
            # and NaN is never chosen as best by Ray.
            metrics[metric] = float("nan")
        checkpoint = state is not None and checkpoint_due(metrics["epoch"], every, config.train.total_epochs)
        if not (checkpoint or state is None or metrics["epoch"] in rungs
                or time.monotonic() - last_report >= interval):
            pending.append(metrics)
            return
        metrics[EARLIER] = list(pending)
        pending.clear()
        last_report = time.monotonic()
        if not checkpoint:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / STATE_FILE)
            whose = {"sweep": sweep_id, "trial_id": trial_id, "params": swept, "epoch": metrics["epoch"]}
            (Path(folder) / TRIAL_FILE).write_text(json.dumps(whose) + "\n")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    # Ray's own checkpoint of this trial (a retry within this sweep) is newer than the one it resumed from
    checkpoint = tune.get_checkpoint()
    if checkpoint is None and trial_id in (checkpoints or {}):
        checkpoint = tune.Checkpoint(checkpoints[trial_id])
    resume = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_state(folder, shown_as=f"{checkpoint.path}/{STATE_FILE}")
    run_trial(config, report=report, resume=resume, gpu_ids=gpu_ids)


def reported_epochs(result):
    """The epochs a report carries: those of its EARLIER list, then its own (without the list)."""
    return [*result.get(EARLIER, []), {k: v for k, v in result.items() if k != EARLIER}]


def checkpoint_due(epoch, every, epochs):
    """A checkpoint every `every` epochs and after the last one."""
    return epoch % every == 0 or epoch == epochs


def load_state(folder, shown_as=None):
    """A trial checkpoint's state. weights_only=True: tensors and plain data, never pickled code;
    anything else is refused with an error naming the file (`shown_as`, else its path)."""
    path = Path(folder) / STATE_FILE
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError:
        raise UnsafeCheckpointError(
            f"checkpoint {shown_as or path} holds more than tensors and plain data, so it was not loaded "
            "(it could run code); delete that checkpoint folder to train the trial again from its start") from None
