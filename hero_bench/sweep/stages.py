"""The stages of a sweep after its grid: bracketing rounds, then confirmation on fresh seeds.

The grid is the first stage (`tune`). Each later stage is decided from the trials table once the
stages before it have ended, recorded in sweep.json (so --resume runs the same trials) and run as
explicit points (space.trial_point) of a grid:

- `bracket-1` ... `bracket-k` (`sweep.bracket: k`): per group and method family, the configuration
  chosen by mean validation accuracy over the tuning seeds (leaderboard.select_best) is looked at
  along every swept number of its family's grid (a float key whose value differs between the
  family's configurations), holding the others at the chosen values. Where the choice sits at an end
  of that line and one more grid step past the end is a value the key allows, that step is a new
  configuration: the end times the ratio of its two outermost values where the line is log-spaced
  (all positive, log-spacing more even than linear spacing), else the end plus their difference.
  Every family of the group gets the same number of new configurations, the most any family needs;
  a family with fewer ends to extend spends the rest on the midpoints between its choice and its
  neighbours on each line (geometric midpoints on log-spaced lines), so tuning budgets stay equal.
  Each new configuration runs at every tuning seed. A round with nothing to extend ends bracketing.
- `confirm` (`sweep.confirm_seeds`): every family's chosen configuration, per group, at every
  confirmation seed. These trials choose nothing: they test the choices (results/comparisons).
"""
import math
import warnings
from dataclasses import dataclass

import numpy as np

from hero_bench import trials, validation
from hero_bench.config import Config, check_value
from hero_bench.errors import ConfigError, HeroBenchWarning
from hero_bench.results import leaderboard
from hero_bench.sweep.space import STAGE
from hero_bench.trials import FAMILY, GROUP_KEYS, SEED

BRACKET = "bracket-"


@dataclass
class Stage:
    """A stage after the grid: its name and its trials, as points (dotted key -> value, seed included)."""

    name: str
    points: list

    def as_json(self):
        return {"name": self.name, "points": self.points}


def decided(marker):
    """The stages after the grid that a sweep has decided so far, from its sweep.json `marker`."""
    return [Stage(s["name"], s["points"]) for s in marker.get("stages", [])]


def tagged(stage):
    """The stage's points, each marked with the stage's name (what Ray's trials carry)."""
    return [{**point, STAGE: stage.name} for point in stage.points]


def next_stage(config, configs, grid_points, stages, df):
    """The stage to run after the grid (`grid_points`) and the `stages` decided so far have ended, given
    the trials table `df`; None when the sweep is complete."""
    rounds = sum(stage.name.startswith(BRACKET) for stage in stages)
    names = [stage.name for stage in stages]
    if rounds < config.sweep.bracket and (rounds == 0 or stages[rounds - 1].points) and trials.CONFIRM not in names:
        tuning_points = grid_points + [p for s in stages if s.name.startswith(BRACKET) for p in s.points]
        return Stage(f"{BRACKET}{rounds + 1}", bracket_points(config, configs, tuning_points, df))
    if config.sweep.confirm_seeds and trials.CONFIRM not in names:
        choices = [point for _, _, point in _chosen(configs, grid_points + [p for s in stages for p in s.points], df)[1]]
        return Stage(trials.CONFIRM, [{**point, SEED: seed} for point in choices for seed in config.sweep.confirm_seeds])
    return None


def _chosen(configs, points, df):
    """(per_config of the tuning stages with each row's typed point, [(group, family, point) chosen])."""
    tuning = trials.tuning(trials.with_added_columns(df))
    table = leaderboard.per_config(tuning)
    columns = leaderboard.configuration_keys(tuning)
    typed = {}
    for point in points:
        params = {k: v for k, v in point.items() if k not in (SEED, STAGE)}
        typed[trials.config_key(trials.config_row(configs.get({**point}), params), columns)] = params
    table["point"] = [typed[trials.config_key(row, columns)] for row in table.to_dict("records")]
    chosen = leaderboard.select_best(table)
    return table, [(tuple(row[k] for k in GROUP_KEYS), row[FAMILY], row["point"]) for row in chosen.to_dict("records")]


def bracket_points(config, configs, points, df):
    """The new tuning trials of one bracketing round (see the module docstring)."""
    table, chosen = _chosen(configs, points, df)
    new = []
    for group in dict.fromkeys(g for g, _, _ in chosen):
        plans = {}
        in_group = (table[GROUP_KEYS].astype(str) == [str(value) for value in group]).all(axis=1)
        for _, family, best in (c for c in chosen if c[0] == group):
            plans[family] = _candidates(best, list(table.loc[in_group & (table[FAMILY] == family), "point"]))
        wanted = max(len(ends) for ends, _ in plans.values())
        if wanted == 0:
            continue
        for family, (ends, middles) in plans.items():
            picked = (ends + middles)[:wanted]
            if len(picked) < wanted:
                warnings.warn(HeroBenchWarning(f"bracketing: family {family} of {group} has {len(picked)} new configurations "
                                               f"to try where the others have {wanted}; its tuning budget is smaller"))
            new += [{**point, SEED: seed} for point in picked for seed in config.sweep.seeds]
    return new


def _candidates(best, members):
    """(one step past each end where `best` sits, midpoints next to `best`) along each swept number."""
    ends, middles = [], []
    known = [dict(m) for m in members]
    for key in _swept_numbers(members):
        line = sorted({m[key] for m in members if all(m.get(k) == best[k] for k in best if k != key)})
        at = line.index(best[key])
        log = _log_spaced(line)
        if at in (0, len(line) - 1) and len(line) >= 2:
            inner = line[1] if at == 0 else line[-2]
            step = best[key] * (best[key] / inner) if log else best[key] + (best[key] - inner)
            ends += _allowed(key, step, best, known)
        for neighbour in (line[at - 1] if at > 0 else None, line[at + 1] if at < len(line) - 1 else None):
            if neighbour is not None:
                middle = math.sqrt(best[key] * neighbour) if log else (best[key] + neighbour) / 2
                middles += _allowed(key, middle, best, known)
    return ends, middles


def _allowed(key, value, best, known):
    """[the configuration `best` with `key` at `value`] if the key allows that value and it is new, else []."""
    value = float(f"{value:.6g}")
    try:
        check_value(key, value)
    except ConfigError:
        return []  # past the key's range (a weight decay below 0): the end is the range's, not the grid's
    point = {**best, key: value}
    if point in known:
        return []
    known.append(point)
    return [point]


def _swept_numbers(members):
    """The float keys whose value differs between a family's configurations, in the order of its points."""
    keys = []
    for key in dict.fromkeys(k for m in members for k in m):
        try:
            hint = validation.walk(Config, key)[-1].hint
        except ConfigError:
            continue
        numbers = [m.get(key) for m in members if key in m]
        if float in (hint, *getattr(hint, "__args__", ())) and len(set(numbers)) > 1 \
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
            keys.append(key)
    return keys


def _log_spaced(line):
    """Whether the values of a line are spaced on a log scale rather than a linear one."""
    values = np.asarray(line, dtype=float)
    if len(values) < 2 or values.min() <= 0:
        return False
    if len(values) == 2:
        return True  # two positive values: the usual knobs (lr, weight decay, ρ, γ) are searched on a log scale
    steps, log_steps = np.diff(values), np.diff(np.log(values))
    return np.std(log_steps) / np.mean(log_steps) <= np.std(steps) / np.mean(steps)
