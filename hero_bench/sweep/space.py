"""The search space: `sweep.space` and `sweep.seeds` -> the grid's points, what is drawn at each, and each trial's Config.

`sweep.space` maps dotted config keys to a list (a grid axis), a constant, or a distribution
`{dist: uniform|loguniform|randint|choice, ...}`; a list of such mappings runs their union. In every
search a list is a grid axis: the axes and constants of a mapping make its grid's points (`cells`),
and the search draws the mapping's distributions at each point, `sweep.num_samples` configurations
per point (random and quasirandom search: hero_bench.sweep.search; optuna: hero_bench.sweep.study).
A grid search has no distributions: Ray grid-searches the mapping's axes, or, for a union, one `point`
axis whose values are the grids' explicit points (each a dict of dotted keys); a drawn search is such
a `point` axis too, of the drawn configurations. `sweep.seeds` is one more grid axis (`train.seed`),
never drawn: every configuration runs at every seed.

Every value a trial can get (grid values, choices, the ends of a range), the sweep's metric and size,
and every trial's Config are checked here, before Ray starts. A resumed sweep's trials are explicit
points too; one that continues an earlier trial names it under `continues`, and keeps its id
(`trial_id`).
"""
import itertools
import json
import math
from dataclasses import dataclass

from ray import tune

from hero_bench import config as config_module
from hero_bench import catalog, trials
from hero_bench.errors import ConfigError
from hero_bench.trials import SEED

DISTRIBUTIONS = {"uniform": ("low", "high"), "loguniform": ("low", "high"), "randint": ("low", "high"), "choice": ("values",)}
POINT = "point"  # the axis of a union of grids, and of drawn configurations
CONTINUES = "continues"  # in a point of a resumed sweep: the id of the trial it continues
STAGE = "stage"  # in a point of a stage after the grid: its name (hero_bench.sweep.stages)
MAX_TRIALS = 10_000  # trials of one sweep: more is a typo in a grid (and a long wait before Ray starts)
UNSWEPT = ("name", "plugins", "sweep", "tracking")  # keys that are the experiment's, the same for every trial


@dataclass
class Distribution:
    """A distribution of sweep.space over one key: `dist` from `low` to `high` (randint: `high`
    excluded), or over `values` (choice)."""

    dist: str
    low: float = 0.0
    high: float = 1.0
    values: list | None = None

    @property
    def size(self):
        """How many distinct values it gives (inf for a range of floats)."""
        return len(self.values) if self.dist == "choice" else self.high - self.low if self.dist == "randint" else math.inf

    def value(self, u):
        """The value at `u` in [0, 1): u spread evenly over the range (on a log scale for loguniform),
        over the integers of randint, or over the choices. Random and quasirandom search draw u."""
        u = float(u)
        if self.dist == "choice":
            return self.values[min(int(u * len(self.values)), len(self.values) - 1)]
        if self.dist == "randint":
            return min(self.low + int(u * (self.high - self.low)), self.high - 1)
        if self.dist == "loguniform":
            drawn = self.low * (self.high / self.low) ** u
        else:
            drawn = self.low + u * (self.high - self.low)
        return min(max(drawn, self.low), self.high)  # rounding never leaves the range


@dataclass
class Cell:
    """One point of the grid (the values of its axes and constants, dotted key -> value) and the
    distributions drawn there (dotted key -> Distribution); `grid`: where it comes from, as messages name it."""

    point: dict
    distributions: dict
    grid: str


def search_space(config):
    """Ray's param_space of a grid sweep: the mapping's axes, or a `point` axis of the union's points;
    the seeds one more axis. (A drawn search's param_space: hero_bench.sweep.search.)"""
    sweep = config.sweep
    if isinstance(sweep.space, list):
        return {POINT: tune.grid_search([cell.point for cell in cells(sweep)]), SEED: tune.grid_search(sweep.seeds)}
    check_sweep(sweep)
    axes, _ = grid(sweep, sweep.space, "sweep.space")
    space = {key: tune.grid_search(values) if isinstance(sweep.space[key], list) else values[0] for key, values in axes.items()}
    return {**space, SEED: tune.grid_search(sweep.seeds)}


def check_sweep(sweep):
    """What the sweep asks of Ray, before any value is read: a metric in every report, a grid, and
    at most MAX_TRIALS trials (counted from the axes' lengths, so a huge grid is never enumerated):
    every point of the grid, num_samples times, at every seed."""
    if sweep.metric not in catalog.per_epoch():
        raise ConfigError(f"sweep.metric must be one of the metrics every epoch reports (Ray Tune needs it in each "
                          f"report): {', '.join(catalog.per_epoch())}; got {sweep.metric!r:.80}")
    if sweep.space == []:
        raise ConfigError("sweep.space is an empty list: give a mapping of keys, or a list of grids to run their union")
    grids = sweep.space if isinstance(sweep.space, list) else [sweep.space]
    points = sum(math.prod(len(v) for v in spec.values() if isinstance(v, list)) for spec in grids)
    count = points * len(sweep.seeds) * sweep.num_samples
    if count > MAX_TRIALS:
        raise ConfigError(f"the sweep asks for {count:,} trials (sweep.space x sweep.seeds x sweep.num_samples); "
                          f"one sweep runs at most {MAX_TRIALS:,}: trim an axis or split it")


def cells(sweep):
    """Every point of the grid of sweep.space (of each grid of a list, in order, a point that repeats
    an earlier one with the same distributions dropped) with the distributions drawn there."""
    check_sweep(sweep)
    union = isinstance(sweep.space, list)
    found = []
    for index, spec in enumerate(sweep.space if union else [sweep.space]):
        where = f"sweep.space[{index}]" if union else "sweep.space"
        if union and not spec:
            raise ConfigError(f"{where} is empty: each grid of the list needs at least one key")
        axes, distributions = grid(sweep, spec, where)
        for combination in itertools.product(*axes.values()):
            cell = Cell(dict(zip(axes, combination)), distributions, where)
            if not any(cell.point == other.point and cell.distributions == other.distributions for other in found):
                found.append(cell)
    return found


def grid(sweep, spec, where):
    """One mapping of sweep.space, every value checked: (its axes, a constant as an axis of one value;
    its distributions). A grid search takes no distribution."""
    axes, distributions = {}, {}
    for key, values in spec.items():
        if key == SEED:
            raise ConfigError(f"{where}.train.seed: list seeds under sweep.seeds instead")
        if isinstance(values, dict):
            distributions[key] = distribution(key, values, f"{where}.{key}")
            if sweep.search == "grid":
                raise ConfigError(f"{where}.{key}: a distribution is drawn by sweep.search random, quasirandom or "
                                  "optuna; a grid search runs lists (grid axes)")
            continue
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ConfigError(f"{where}.{key} is an empty list: a grid axis needs at least one value")
        axes[key] = [check_value(key, value, f"{where}.{key}") for value in values]
    return axes, distributions


def check_value(key, value, where):
    if key.split(".")[0] in UNSWEPT:
        raise ConfigError(f"{where}: name, plugins, sweep.* and tracking.* belong to the whole experiment and cannot be swept")
    try:
        return config_module.check_value(key, value)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def distribution(key, spec, where):
    """The Distribution of `key` that `spec` states; each value it can give is one `key` takes."""
    dist = spec.get("dist")
    if dist not in DISTRIBUTIONS:
        raise ConfigError(f"{where}.dist must be one of {', '.join(DISTRIBUTIONS)}, got {dist!r:.80}")
    names = DISTRIBUTIONS[dist]
    extra = sorted(set(spec) - {"dist", *names})
    if extra or any(n not in spec for n in names):
        raise ConfigError(f"{where}: dist {dist} takes exactly {', '.join(names)}; got {', '.join(sorted(spec))}")
    if dist == "choice":
        if not isinstance(spec["values"], list) or not spec["values"]:
            raise ConfigError(f"{where}.values must be a non-empty list")
        return Distribution(dist, values=[check_value(key, value, f"{where}.values") for value in spec["values"]])
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
    return Distribution(dist, low, high) if dist == "randint" else Distribution(dist, float(low), float(high))


def trial_point(params):
    """A trial's point: its swept values as one dict of dotted keys (a union sweep nests them under
    `point`), with the stage it belongs to where that is not the grid."""
    flat = {**params.get(POINT, {}), **{k: v for k, v in params.items() if k != POINT}}
    flat.pop(CONTINUES, None)
    return flat


def trial_params(params):
    """A trial's swept values as one dict of dotted keys."""
    flat = trial_point(params)
    flat.pop(STAGE, None)
    return flat


def trial_stage(params):
    """The stage a trial belongs to (trials.TUNE for the grid)."""
    return params.get(POINT, {}).get(STAGE, trials.TUNE)


def points(space, num_samples):
    """Every trial of a grid-only param_space as a point (see trial_point), num_samples times each."""
    return [trial_point(params) for params in grid_params(space) for _ in range(num_samples)]


def trial_id(params, ray_trial_id):
    """The id a trial is known by in trials.csv, W&B and its checkpoints: that of the trial it
    continues (a resumed sweep), else Ray's."""
    return params.get(POINT, {}).get(CONTINUES) or ray_trial_id


def trial_count(space, num_samples):
    """How many trials Ray runs over `space`: num_samples times every combination of its grid axes."""
    axes = [spec["grid_search"] for spec in space.values() if isinstance(spec, dict) and set(spec) == {"grid_search"}]
    return num_samples * math.prod(len(values) for values in axes)


def grid_params(space):
    """Every trial's Ray params of a param_space of grid axes (a constant counts as a one-value axis)."""
    axes = {key: spec["grid_search"] if isinstance(spec, dict) and set(spec) == {"grid_search"} else [spec]
            for key, spec in space.items()}
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def factory_params(sweep):
    """Ray params that cover what the factories read (config.FACTORY_KEYS) at every point of a sweep
    whose configurations are asked as it runs (optuna): every choice of a distribution over such a
    key, every other distribution at one value (a range's low end, a choice's first), one seed."""
    params = []
    for cell in cells(sweep):
        axes = {key: d.values if d.dist == "choice" and reads_factory(key) else [d.value(0.0)]
                for key, d in cell.distributions.items()}
        params += [{POINT: {**cell.point, **dict(zip(axes, values))}, SEED: sweep.seeds[0]}
                   for values in itertools.product(*axes.values())]
    return params


def reads_factory(key):
    return any(key == k or key.startswith(k + ".") for k in config_module.FACTORY_KEYS)


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

    def check(self, params):
        """Build the Config of every trial in `params` (Ray params) now, so a combination its
        factories refuse (model.args of another model, a model.args value) fails before Ray starts;
        the configs are kept for the driver. Returns the Configs built."""
        built = []
        for one in params:
            try:
                built.append(self.get(one))
            except ConfigError as exc:
                swept = ", ".join(f"{k}={v}" for k, v in trial_params(one).items() if k != SEED)
                raise ConfigError(f"sweep.space point {{{swept}}}: {exc}") from None
        return built
