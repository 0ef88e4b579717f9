"""Optuna search with seeds: a Ray Tune Searcher that asks Optuna for configurations, runs each at
every seed, and tells Optuna the mean of sweep.metric over the seeds.

Each point of the grid of sweep.space (hero_bench.sweep.space.cells) has a study of its own, over
that point's distributions; the studies are asked in turn until each holds sweep.num_samples
trials. Optuna sees one trial per configuration, Ray Tune runs one trial per (configuration, seed).
Once every seed of a configuration has ended, its study is told:
  - every seed completed: the mean of sweep.metric over the seeds;
  - a seed stopped by ASHA: PRUNED (a stopped seed's metric is of an earlier epoch: no mean is made);
  - a seed diverged: FAIL (Optuna's samplers learn from completed trials only).
A seed that failed (raised after its retries) leaves its configuration unfinished (RUNNING) until
--resume runs that seed again. Each seed's outcome (trial id, status, metric) is a user attribute of
the study's trial, `seed <s>`.

Ray's Repeater (which averages repeats for a searcher) is not used: it has no seeds of its own, would
average a diverged seed away (nanmean), and keeps its groups only in Ray's pickled state.

The studies live in one Optuna journal file in the results folder, optuna.journal (JSON lines,
never pickles), which `optuna-dashboard results/<name>/optuna.journal` opens. Each study's sampler is
Optuna's TPE, seeded by sweep.search_seed, the point's index and the number of trials the study
already holds (so a resumed study never asks its first configurations again). --resume continues from
the journal alone: `Searcher.open` lists the configurations asked so far, the seeds of those not yet
told run first (from their checkpoints, like a grid's), then new configurations are asked.
"""
import json
import math

import numpy as np
import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray.tune.search import Searcher as TuneSearcher

from hero_bench import config as config_module
from hero_bench import trials
from hero_bench.errors import ConfigError
from hero_bench.sweep.space import CONTINUES, POINT, cells
from hero_bench.trials import SEED
from hero_bench.validation import show


def check(sweep):
    """What Optuna needs of sweep.space, before Ray starts: a range (uniform or loguniform) at every
    point of the grid, so that it cannot ask one configuration twice, and choices its journal can
    store (numbers, text, true/false, null)."""
    for cell in cells(sweep):
        if not any(d.dist in ("uniform", "loguniform") for d in cell.distributions.values()):
            raise ConfigError(f"{cell.grid}: optuna search needs a uniform or loguniform distribution at each point of the "
                              "grid (over choices alone it may ask one configuration twice); draw choices with search: "
                              "random or quasirandom, or list them as a grid")
        for key, d in cell.distributions.items():
            odd = [v for v in d.values or [] if not (v is None or isinstance(v, (bool, int, float, str)))]
            if odd:
                raise ConfigError(f"{cell.grid}.{key}: optuna's choices must be numbers, text, true/false or null, got {show(odd[0])}")


def configurations(sweep):
    """How many configurations an optuna sweep runs: num_samples at each point of the grid."""
    return len(cells(sweep)) * sweep.num_samples


def study_name(config, index, cell):
    """`quickstart [1] optimizer.name=sam`: the experiment, the point's index and its values."""
    point = " ".join(f"{key}={value}" for key, value in cell.point.items())
    return f"{config.name} [{index}]" + (f" {point}" if point else "")


def distribution(d):
    """The Optuna distribution of a hero_bench.sweep.space.Distribution."""
    if d.dist == "choice":
        return optuna.distributions.CategoricalDistribution(d.values)
    if d.dist == "randint":
        return optuna.distributions.IntDistribution(d.low, d.high - 1)
    return optuna.distributions.FloatDistribution(d.low, d.high, log=d.dist == "loguniform")


def key(params):
    return json.dumps(params, sort_keys=True)


class Searcher(TuneSearcher):
    """Ray Tune's searcher of an optuna sweep (see the module docstring). `backlog`: the Ray params
    (flat, with `continues` where a trial continues an earlier one) of trials of configurations already
    asked, which a resumed sweep runs before it asks new ones."""

    def __init__(self, config, journal, backlog=()):
        super().__init__(metric=config.sweep.metric, mode=config.sweep.mode)
        self.config, self.journal, self.backlog = config, str(journal), list(backlog)
        self.queue = []  # the next trials to suggest: (point index, trial number, params, seed, continues)
        self.running = {}  # Ray's trial id -> (point index, trial number, params, seed, the trial's id in trials.csv)
        self.storage = None  # the journal, opened by `open`

    def open(self):
        """Open the journal and every point's study; tell each study what its finished seeds decide
        (a journal written up to a crash may hold them untold). Returns the configurations asked so far."""
        if self.storage is not None:
            return self.asked
        self.storage = JournalStorage(JournalFileBackend(self.journal))
        sweep = self.config.sweep
        self.cells, self.studies, self.ids, self.counts, self.where, self.asked = cells(sweep), [], [], [], {}, []
        existing = {s.study_name for s in self.storage.get_all_studies()}
        for index, cell in enumerate(self.cells):
            name = study_name(self.config, index, cell)
            held = self.storage.get_all_trials(self.storage.get_study_id_from_name(name)) if name in existing else []
            seed = int(np.random.SeedSequence([sweep.search_seed, index, len(held)]).generate_state(1)[0])
            self.studies.append(optuna.create_study(
                storage=self.storage, study_name=name, sampler=optuna.samplers.TPESampler(seed=seed),
                direction="maximize" if sweep.mode == "max" else "minimize", load_if_exists=True))
            self.ids.append(self.storage.get_study_id_from_name(name))
            count = 0
            for trial in held:
                if set(trial.params) != set(cell.distributions):  # asked when the sweep was stopped mid-ask: never run
                    self.studies[index].tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
                    continue
                params = {**cell.point, **trial.params}
                self.where[key(params)] = (index, trial.number)
                self.asked.append(params)
                self.tell_if_done(index, trial.number)
                count += 1
            self.counts.append(count)
        return self.asked

    def suggest(self, trial_id):
        self.open()
        if not self.queue:
            self.queue = self.next_trials()
        if not self.queue:
            return TuneSearcher.FINISHED
        index, number, params, seed, continues = self.queue.pop(0)
        self.running[trial_id] = (index, number, params, seed, continues or trial_id)
        return {POINT: {**params, CONTINUES: continues} if continues else params, SEED: seed}

    def next_trials(self):
        """The trials of the next configuration: one of the backlog, else every seed of a new
        configuration asked of the study that holds fewest (none once each holds num_samples)."""
        if self.backlog:
            point = self.backlog.pop(0)
            params = {k: v for k, v in point.items() if k not in (SEED, CONTINUES)}
            return [(*self.where[key(params)], params, point[SEED], point.get(CONTINUES))]
        index = min(range(len(self.counts)), key=self.counts.__getitem__)
        if self.counts[index] >= self.config.sweep.num_samples:
            return []
        cell = self.cells[index]
        trial = self.studies[index].ask({k: distribution(d) for k, d in cell.distributions.items()})
        params = {**cell.point, **trial.params}
        self.where[key(params)] = (index, trial.number)
        self.counts[index] += 1
        return [(index, trial.number, params, seed, None) for seed in self.config.sweep.seeds]

    def on_trial_complete(self, trial_id, result=None, error=False):
        index, number, params, seed, logical_id = self.running.pop(trial_id)
        result = result or {}
        config = config_module.for_trial(self.config, params)
        value = result.get(self.metric)
        outcome = {"trial_id": logical_id, "status": trials.trial_status(config, result, error),
                   self.metric: value if isinstance(value, (int, float)) and math.isfinite(value) else None}
        self.storage.set_trial_user_attr(self.trial_id(index, number), f"seed {seed}", outcome)
        self.tell_if_done(index, number)

    def trial_id(self, index, number):
        """The storage's id of trial `number` of study `index`."""
        return self.storage.get_trial_id_from_study_id_trial_number(self.ids[index], number)

    def tell_if_done(self, index, number):
        """Tell the study what the seeds of its trial `number` decide, once each has a final status."""
        trial = self.storage.get_trial(self.trial_id(index, number))
        outcomes = [trial.user_attrs.get(f"seed {seed}") for seed in self.config.sweep.seeds]
        if trial.state.is_finished() or any(o is None or o["status"] not in trials.FINAL_STATUSES for o in outcomes):
            return
        statuses = {o["status"] for o in outcomes}
        if "diverged" in statuses:
            self.studies[index].tell(number, state=TrialState.FAIL)
        elif "stopped" in statuses:
            self.studies[index].tell(number, state=TrialState.PRUNED)
        else:
            self.studies[index].tell(number, sum(o[self.metric] for o in outcomes) / len(outcomes))

    def save(self, checkpoint_path):
        """Nothing: the studies are in the journal, and Ray keeps no copy of them."""
