"""The dry run of a sweep, before Ray starts: what only a trial's first steps can show (dataset files
missing, a split left empty, `train.device: cuda` without a GPU, a model too big for its device, a
model the data does not fit) found once, in seconds, instead of in every trial.

For each distinct (data, model, device) among the sweep's trials, one trial (the one with the largest
batch) does what it would do before its first epoch and one optimizer step on one batch, on the
device its trials will use (hero_bench.train.dry_run). A failure is one line naming the setting.
It runs for a local Ray only: on a cluster (--address) trials run on other machines, whose files and
devices the driver cannot see. Nothing here imports Ray.
"""
import json

from hero_bench import train
from hero_bench.errors import ConfigError, HeroBenchError
from hero_bench.validation import show


def dry_run(configs, gpus_per_trial):
    """The dry run of every distinct (data, model, device) among `configs` (each a trial's Config),
    for trials given `gpus_per_trial` GPUs (sweep.resources_per_trial.gpu)."""
    chosen = {}
    for config in configs:
        device = attempt(config, f"train.device={config.train.device}", lambda: trial_device(config, gpus_per_trial))
        key = json.dumps([config.data.__dict__, config.model.__dict__, str(device)], sort_keys=True, default=str)
        if key not in chosen or config.train.batch_size > chosen[key][0].train.batch_size:
            chosen[key] = config, device
    for config, device in chosen.values():
        attempt(config, f"on {device}", lambda: train.dry_run(config, device))


def trial_device(config, gpus_per_trial):
    """The device a trial of `config` trains on when Ray gives it `gpus_per_trial` GPUs of this machine
    (see hero_bench.train.resolve_device: none given, it never takes one)."""
    return train.resolve_device(config.train.device, None if gpus_per_trial > 0 else [])


def attempt(config, where, step):
    """step(), its failure turned into one line naming the trial's data, model and `where` (its device)."""
    try:
        return step()
    except Exception as exc:  # noqa: BLE001 - whatever a trial would fail with, said in one line
        lines = str(exc).strip().splitlines()
        why = (lines[0] if lines else "") if isinstance(exc, HeroBenchError) else f"{type(exc).__name__}: {lines[0] if lines else ''}"
        raise ConfigError(f"the dry run of one batch failed for {setting(config)} {where}: {why}") from None


def setting(config):
    """`data.name=mnist data.root='missing', model.name=mlp model.args.hidden=[16]`: what a dry run tried."""
    d, m = config.data, config.model
    data = [f"data.name={d.name}", *([f"data.root={show(d.root)}"] if d.root else []), *(f"data.args.{k}={show(v)}" for k, v in d.args.items())]
    model = [f"model.name={m.name}", *(f"model.args.{k}={show(v)}" for k, v in m.args.items())]
    return f"{' '.join(data)}, {' '.join(model)}"
