"""How a sweep's configurations are chosen: what Ray runs, decided before Ray starts.

- grid: every point of the grid of sweep.space (hero_bench.sweep.space.search_space), each run
  `num_samples` times.
- random: at each point of the grid, `num_samples` configurations, each distribution drawn
  independently and uniformly (on a log scale for loguniform).
- quasirandom: the same from a scrambled Halton sequence over the point's distributions (one
  dimension each), as AlgoPerf's tuning rules draw: its first points already cover the space evenly.
- optuna: asked of Optuna as the sweep runs (hero_bench.sweep.study).

Random and quasirandom search draw before Ray starts, from a generator seeded by sweep.search_seed
and the point's index, so the same file gives the same configurations on any machine (with numpy's
and scipy's generators of the same versions; --resume checks the draws stored in sweep.json against a
new draw). A configuration drawn twice at one point is drawn again: num_samples is checked against the
distinct configurations a space of choices has. The draws are explicit points, each run at every
seed: Ray runs them as a grid over one `point` axis, and --resume continues them from plain files.
"""
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from ray import tune
from scipy.stats import qmc

from hero_bench import trials
from hero_bench.errors import ConfigError
from hero_bench.sweep import study
from hero_bench.sweep.space import POINT, TrialConfigs, cells, factory_params, grid_params, search_space, trial_params
from hero_bench.trials import FAMILY, GROUP_KEYS, SEED

DRAWN = ("random", "quasirandom")


@dataclass
class Search:
    """What Ray runs of a sweep: its `space` (Ray's param_space) and `num_samples` (optuna: no
    space, and every trial its searcher asks), the configurations random and quasirandom search drew
    (`draws`, stored in sweep.json; None for the others), and the Ray params of the trials whose
    Configs are built before Ray starts (`checked`: every trial, or for optuna what the factories read)."""

    space: dict
    num_samples: int
    draws: list | None
    checked: list


def prepare(config):
    """The Search of `config`'s sweep; every value it can run is checked (its Configs are not built yet)."""
    sweep = config.sweep
    if sweep.search == "optuna":
        study.check(sweep)
        return Search({}, study.configurations(sweep) * len(sweep.seeds), None, factory_params(sweep))
    if sweep.search in DRAWN:
        draws = draw(sweep)
        space = {POINT: tune.grid_search(draws), SEED: tune.grid_search(sweep.seeds)}
        return Search(space, 1, draws, grid_params(space))
    space = search_space(config)
    return Search(space, sweep.num_samples, None, grid_params(space))


def draw(sweep):
    """The configurations (dotted key -> value) random or quasirandom search runs: at each point of
    the grid, in order, `num_samples` distinct ones."""
    out = []
    for index, cell in enumerate(cells(sweep)):
        distinct = math.prod(d.size for d in cell.distributions.values())
        if distinct < sweep.num_samples:
            raise ConfigError(f"sweep.num_samples is {sweep.num_samples}, but the distributions of {cell.grid} give {distinct:g} "
                              f"distinct configuration(s) at each point of its grid, and {sweep.search} search draws distinct ones; "
                              "lower sweep.num_samples, or run the values as a grid")
        keys = list(cell.distributions)
        drawn = []
        for u in uniforms(sweep.search, len(keys), sweep.num_samples, np.random.default_rng([sweep.search_seed, index])):
            values = {key: cell.distributions[key].value(x) for key, x in zip(keys, u)}
            if values not in drawn:
                drawn.append(values)
            if len(drawn) == sweep.num_samples:
                break
        out += [{**cell.point, **values} for values in drawn]
    return out


def uniforms(search, dims, count, rng):
    """Points of [0, 1)^dims without end, `count` at a time: independent uniform ones (random), or a
    scrambled Halton sequence's (quasirandom)."""
    halton = qmc.Halton(dims, scramble=True, rng=rng) if search == "quasirandom" and dims else None
    while True:
        yield from halton.random(count) if halton else rng.random((count, dims))


def tuning_budgets(config):
    """Per (dataset, model, label noise and kind) and method family of a grid, random or quasirandom
    sweep: how many configurations the family is given (`configurations`: grid points, or draws) and
    which keys vary among them (`swept`). An equal comparison gives every family of a group the same
    number, with train.lr among the keys."""
    if config.sweep.search == "optuna":
        raise ConfigError("tuning budgets of an optuna search are known only as it runs (Optuna chooses the "
                          "configurations); each study asks sweep.num_samples")
    sweep = prepare(config)
    configs = TrialConfigs(config)
    table = pd.DataFrame([trials.row("", configs.get(p), trial_params(p)) for p in sweep.checked
                          if p[SEED] == config.sweep.seeds[0]])
    table[FAMILY] = trials.family(table)
    keys = [c for c in trials.config_columns(table) if c != SEED]
    rows = []
    for group, family in table.groupby(GROUP_KEYS + [FAMILY], dropna=False, sort=True):
        distinct = family[keys].astype(str).drop_duplicates()
        swept = sorted(k for k in keys if distinct[k].nunique() > 1)
        rows.append({**dict(zip(GROUP_KEYS + [FAMILY], group)), "configurations": len(distinct), "swept": swept})
    return pd.DataFrame(rows)
