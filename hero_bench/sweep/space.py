"""The search space: `sweep.space` and `sweep.seeds` -> Ray Tune's param_space, and each trial's Config.

`sweep.space` maps dotted config keys to a list (a grid axis), a constant, or a distribution
`{dist: uniform|loguniform|randint|choice, ...}`; `sweep.seeds` is one more grid axis (`train.seed`).
A list of such grids runs their union: Ray grid-searches one `point` axis whose values are the grids'
explicit points (each a dict of dotted keys). Every value a trial can get (grid values, choices, the
ends of a range), the sweep's metric and size, and every trial's Config of a grid sweep are checked
here, before Ray starts. A resumed sweep's trials are such explicit points too; one that continues an
earlier trial names it under `continues`, and keeps its id (`trial_id`).
"""
import itertools
import json
import math

import pandas as pd
from ray import tune

from hero_bench import config as config_module
from hero_bench import catalog, trials
from hero_bench.errors import ConfigError
from hero_bench.trials import FAMILY, GROUP_KEYS, SEED

DISTRIBUTIONS = {
    "uniform": (("low", "high"), tune.uniform),
    "loguniform": (("low", "high"), tune.loguniform),
    "randint": (("low", "high"), tune.randint),
    "choice": (("values",), tune.choice),
}
POINT = "point"  # the axis of a union of grids
CONTINUES = "continues"  # in a point of a resumed sweep: the id of the trial it continues
MAX_TRIALS = 10_000  # trials of one sweep: more is a typo in a grid (and a long wait before Ray starts)
UNSWEPT = ("name", "sweep", "tracking")  # sections that are the experiment's, the same for every trial


def search_space(config):
    """Ray param_space over dotted keys (see the module docstring)."""
    sweep = config.sweep
    check_sweep(sweep)
    grid = sweep.search in ("grid", "random")
    if isinstance(sweep.space, list):
        if sweep.search != "grid":
            raise ConfigError("sweep.space as a list of grids (their union) needs sweep.search: grid")
        return {POINT: tune.grid_search(union_points(sweep.space)), SEED: tune.grid_search(sweep.seeds)}
    space = {}
    for key, spec in sweep.space.items():
        where = f"sweep.space.{key}"
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"{where} is an empty list: a grid axis needs at least one value")
            spec = [check_value(key, value, where) for value in spec]
            space[key] = tune.grid_search(spec) if sweep.search == "grid" else tune.choice(spec)
        elif isinstance(spec, dict):
            space[key] = distribution(key, spec, where)
        else:
            space[key] = check_value(key, spec, where)  # a constant: allowed, simply overrides the key
    if SEED in space:
        raise ConfigError("sweep.space.train.seed: list seeds under sweep.seeds instead")
    space[SEED] = tune.grid_search(sweep.seeds) if grid else tune.choice(sweep.seeds)
    return space


def check_sweep(sweep):
    """What the sweep asks of Ray, before any value is read: a metric in every report, a grid, and
    at most MAX_TRIALS trials (counted from the axes' lengths, so a huge grid is never enumerated)."""
    if sweep.metric not in catalog.per_epoch():
        raise ConfigError(f"sweep.metric must be one of the metrics every epoch reports (Ray Tune needs it in each "
                          f"report): {', '.join(catalog.per_epoch())}; got {sweep.metric!r:.80}")
    if sweep.space == []:
        raise ConfigError("sweep.space is an empty list: give a mapping of keys, or a list of grids to run their union")
    if sweep.search == "optuna":
        count = sweep.num_samples
    else:  # random search draws from the lists: only the seeds are a grid
        grids = sweep.space if isinstance(sweep.space, list) else [sweep.space]
        points = sum(math.prod(len(v) for v in grid.values() if isinstance(v, list)) for grid in grids)
        count = (points if sweep.search == "grid" else 1) * len(sweep.seeds) * sweep.num_samples
    if count > MAX_TRIALS:
        raise ConfigError(f"the sweep asks for {count:,} trials (sweep.space x sweep.seeds x sweep.num_samples); "
                          f"one sweep runs at most {MAX_TRIALS:,}: trim an axis or split it")


def union_points(grids):
    """Every point of every grid (lists are axes, scalars constants), in order, duplicates dropped."""
    points = []
    for index, spec in enumerate(grids):
        where = f"sweep.space[{index}]"
        if not spec:
            raise ConfigError(f"{where} is empty: each grid of the list needs at least one key")
        axes = {}
        for key, values in spec.items():
            values = values if isinstance(values, list) else [values]
            if not values:
                raise ConfigError(f"{where}.{key} is an empty list: a grid axis needs at least one value")
            axes[key] = [check_value(key, value, f"{where}.{key}") for value in values]
        if SEED in axes:
            raise ConfigError(f"{where}.train.seed: list seeds under sweep.seeds instead")
        for combination in itertools.product(*axes.values()):
            point = dict(zip(axes, combination))
            if point not in points:
                points.append(point)
    return points


def check_value(key, value, where):
    if key.split(".")[0] in UNSWEPT:
        raise ConfigError(f"{where}: name, sweep.* and tracking.* belong to the whole experiment and cannot be swept")
    try:
        return config_module.check_value(key, value)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def distribution(key, spec, where):
    """A Ray Tune distribution over `key`'s values; each value it can draw is one `key` takes."""
    dist = spec.get("dist")
    if dist not in DISTRIBUTIONS:
        raise ConfigError(f"{where}.dist must be one of {', '.join(DISTRIBUTIONS)}, got {dist!r:.80}")
    names, factory = DISTRIBUTIONS[dist]
    extra = sorted(set(spec) - {"dist", *names})
    if extra or any(n not in spec for n in names):
        raise ConfigError(f"{where}: dist {dist} takes exactly {', '.join(names)}; got {', '.join(sorted(spec))}")
    if dist == "choice":
        if not isinstance(spec["values"], list) or not spec["values"]:
            raise ConfigError(f"{where}.values must be a non-empty list")
        return factory([check_value(key, value, f"{where}.values") for value in spec["values"]])
    low, high = spec["low"], spec["high"]
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high))
    if not numbers or not low < high:
        raise ConfigError(f"{where}: low and high must be finite numbers with low < high, got {low!r:.40}, {high!r:.40}")
    if dist == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0, got {low!r}")
    if dist == "randint" and not (isinstance(low, int) and isinstance(high, int)):
        raise ConfigError(f"{where}: randint draws integers from low to high - 1; low and high must be integers, got {low!r}, {high!r}")
    # every draw lies between the two ends (randint's high is exclusive), so the ends stand for all
    for end in (low, high - 1) if dist == "randint" else (float(low), float(high)):
        check_value(key, end, f"{where} (dist {dist})")
    return factory(low, high)


def trial_params(params):
    """A trial's swept values as one dict of dotted keys (a union sweep nests them under `point`)."""
    flat = {**params.get(POINT, {}), **{k: v for k, v in params.items() if k != POINT}}
    flat.pop(CONTINUES, None)
    return flat


def trial_id(params, ray_trial_id):
    """The id a trial is known by in trials.csv, W&B and its checkpoints: that of the trial it
    continues (a resumed sweep), else Ray's."""
    return params.get(POINT, {}).get(CONTINUES) or ray_trial_id


def trial_count(space, num_samples):
    """How many trials Ray runs over `space`: num_samples times every combination of its grid axes."""
    axes = [spec["grid_search"] for spec in space.values() if isinstance(spec, dict) and set(spec) == {"grid_search"}]
    return num_samples * math.prod(len(values) for values in axes)


def grid_params(space):
    """Every trial's Ray params of a grid-only param_space (a constant counts as a one-value axis),
    or None when the space has a distribution, so the trials are known only as Ray draws them."""
    axes = {}
    for key, spec in space.items():
        if isinstance(spec, dict) and set(spec) == {"grid_search"}:
            axes[key] = spec["grid_search"]
        elif isinstance(spec, tune.search.sample.Domain):
            return None
        else:
            axes[key] = [spec]
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


class TrialConfigs:
    """Each trial's Config, built once from the experiment and the trial's Ray params and shared by
    every part of the sweep driver that needs it (the trials table, W&B)."""

    def __init__(self, base):
        self.base = base
        self._configs = {}

    def get(self, params):
        params = trial_params(params)
        key = json.dumps(params, sort_keys=True, default=str)
        if key not in self._configs:
            self._configs[key] = config_module.for_trial(self.base, params)
        return self._configs[key]

    def check(self, space):
        """Build every trial's Config of a grid sweep now, so a combination its factories refuse
        (model.args of another model, a model.args value) fails before Ray starts; the configs are
        kept for the driver. Where Ray draws the trials, every combination of the values the
        factories read (config.FACTORY_KEYS) is built instead, the other keys at one value each.
        Returns the Configs built."""
        points = grid_params(space)
        if points is None:
            points = grid_params({key: factory_axis(key, spec) for key, spec in space.items()})
        built = []
        for params in points:
            try:
                built.append(self.get(params))
            except ConfigError as exc:
                swept = ", ".join(f"{k}={v}" for k, v in trial_params(params).items() if k != SEED)
                raise ConfigError(f"sweep.space point {{{swept}}}: {exc}") from None
        return built


def factory_axis(key, spec):
    """What TrialConfigs.check builds of one key of a drawn space: every choice of a key the
    factories read, else one value (a range's low end, a choice's first)."""
    if not isinstance(spec, tune.search.sample.Domain):
        return spec
    values = spec.categories if isinstance(spec, tune.search.sample.Categorical) else [spec.lower]
    reads = any(key == k or key.startswith(k + ".") for k in config_module.FACTORY_KEYS)
    return tune.grid_search(values if reads else values[:1])


def tuning_budgets(config):
    """Per (dataset, model, label noise and kind) and method family of a grid sweep: how many
    configurations the family is given (`configurations`) and which keys its grid sweeps (`swept`).
    An equal comparison gives every family of a group the same number, with train.lr among the keys."""
    space = search_space(config)
    params = grid_params(space)
    if params is None:
        raise ConfigError("tuning budgets are defined for grid sweeps (sweep.search: grid) only")
    configs = TrialConfigs(config)
    table = pd.DataFrame([trials.row("", configs.get(p), trial_params(p)) for p in params if p[SEED] == config.sweep.seeds[0]])
    table[FAMILY] = trials.family(table)
    keys = [c for c in trials.config_columns(table) if c != SEED]
    rows = []
    for group, family in table.groupby(GROUP_KEYS + [FAMILY], dropna=False, sort=True):
        distinct = family[keys].astype(str).drop_duplicates()
        swept = sorted(k for k in keys if distinct[k].nunique() > 1)
        rows.append({**dict(zip(GROUP_KEYS + [FAMILY], group)), "configurations": len(distinct), "swept": swept})
    return pd.DataFrame(rows)
