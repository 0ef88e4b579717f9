"""ASHA over configurations (`sweep.scheduler: asha`): its rungs compare configurations by their
seeds' mean, never one seed of a configuration with another.

The rungs lie at grace_period x reduction_factor^k epochs up to the experiment's train.epochs, as
Ray Tune's ASHAScheduler places them; they count epochs (a resumed trial's training_iteration restarts
at 1), and a trial is never cut at the last one (Ray's max_t). At a rung, a configuration's value is the mean of sweep.metric
over its seeds that have reached it. The first of its seeds to reach a rung decides for the
configuration there, asynchronously as in ASHA: if its value is below the top 1/reduction_factor of
the values the other configurations have there, the configuration is stopped at that rung; every
later seed of it stops when it reaches that rung (a seed already past it, at its next report), so a
configuration's seeds stop at one rung and its trials are all `stopped`. Otherwise every seed of it
goes on past that rung. A configuration is thus run to the end at every seed, or stopped at one rung.
A trial that no rung stops runs all its epochs. A resumed sweep starts its rungs afresh (docs/sweeps.md).
"""
import json
import math

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from hero_bench.sweep.space import trial_params
from hero_bench.trials import SEED


def rung_epochs(config):
    """The epochs at which an ASHA sweep's rungs lie (none for another scheduler), lowest first."""
    if config.sweep.scheduler != "asha":
        return []
    asha = config.sweep.asha
    count = int(math.log(max(config.train.epochs, asha.grace_period) / asha.grace_period) / math.log(asha.reduction_factor) + 1)
    return [asha.grace_period * asha.reduction_factor ** k for k in range(count)]


class ConfigurationASHA(FIFOScheduler):
    """The scheduler of an ASHA sweep `config` (see the module docstring)."""

    def __init__(self, config):
        super().__init__()
        sweep = config.sweep
        self.objective, self.sign, self.factor = sweep.metric, 1 if sweep.mode == "max" else -1, sweep.asha.reduction_factor
        self.rungs = sorted(rung_epochs(config), reverse=True)  # highest first
        self.values = {}  # (configuration, rung) -> {seed: value}
        self.decided = {}  # configuration -> {rung: whether it went on}
        self.reached = set()  # (configuration, seed, rung) recorded

    def on_trial_result(self, tune_controller, trial, result):
        params = trial_params(trial.config)
        seed = params.pop(SEED)
        configuration, epoch, value = json.dumps(params, sort_keys=True, default=str), result.get("epoch"), result.get(self.objective)
        decided = self.decided.setdefault(configuration, {})
        if epoch is None or value is None or not math.isfinite(value):
            return TrialScheduler.CONTINUE
        stopped = [rung for rung, went_on in decided.items() if not went_on]
        if stopped:
            return TrialScheduler.STOP if epoch >= stopped[0] else TrialScheduler.CONTINUE
        for rung in self.rungs:
            if epoch < rung or (configuration, seed, rung) in self.reached:
                continue
            self.reached.add((configuration, seed, rung))
            self.values.setdefault((configuration, rung), {})[seed] = self.sign * value
            if rung not in decided:
                others = [np.mean(list(v.values())) for (c, r), v in self.values.items() if r == rung and c != configuration]
                cutoff = np.percentile(others, (1 - 1 / self.factor) * 100) if others else None
                decided[rung] = cutoff is None or self.sign * value >= cutoff
            break
        return TrialScheduler.CONTINUE if all(decided.values()) else TrialScheduler.STOP
