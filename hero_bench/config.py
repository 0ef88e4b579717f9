"""The experiment schema: one YAML file, validated once at load, plain data afterwards.

Every section is a dataclass; each field states its type and, where a value can be wrong, its rule
(`within` a range, `one_of` some choices: hero_bench.validation). `from_dict` builds the sections,
checks every rule, resolves names against the registries and checks the keyword arguments of the
dataset and model factories; deeper code trusts the result. The optimizer section is the methods'
own (hero_bench.methods.OptimizerConfig), so a method's setting is stated once, where the method
uses it. `load` reads a file (hero_bench.yamlfile) and applies `--set key.sub=value` overrides
before validation. The experiment's `plugins` are imported before the rest is validated, so the
names they register resolve like built-in ones (hero_bench.plugins). A sweep's trial is the
experiment's Config with its swept values set (`for_trial`), each value checked once at the door
(`check_value`). README shows a whole file.

Upper bounds sit where a larger value is a typo (an extra zero) rather than an experiment.
"""
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from hero_bench import catalog, data, methods, models, plugins, rules, validation
from hero_bench.trials import GROUP_KEYS
from hero_bench.errors import ConfigError
from hero_bench.methods import OptimizerConfig
from hero_bench.validation import one_of, show, within
from hero_bench.yamlfile import parse_override, read_yaml

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # matched whole (fullmatch): "rt\n" is not a name
MAX_NAME = 100  # it names folders (results/, Ray's storage, W&B's group); longer ones break on some systems
MAX_SEED = 2**32 - 1  # numpy's and torch's generators both take every seed up to here
SEEDS = f"[0, {MAX_SEED}]"
COUNT = "[1, 1048576]"  # sizes of batches and samples: 2^20 at most


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None  # None: a per-user cache folder
    download: bool = False
    val_fraction: float = within("(0, 1)", 0.1)
    label_noise: float = within("[0, 1)", 0.0)
    label_noise_kind: str = one_of(data.NOISE_KINDS, "uniform")  # uniform: re-drawn over all K classes | flip: moved to another class
    args: dict = field(default_factory=dict)  # extra keyword arguments of the dataset factory


@dataclass
class ModelConfig:
    name: str = "mlp"
    args: dict = field(default_factory=dict)  # extra keyword arguments of the model factory


@dataclass
class TrainConfig:
    epochs: int = within("[1, 100000]", 20)
    batch_size: int = within(COUNT, 64)
    lr: float = within("(0, 1000]", 0.1)
    momentum: float = within("[0, 1)", 0.9)
    weight_decay: float = within("[0, 1000]", 5e-4)
    nesterov: bool = False
    schedule: str = one_of(("cosine", "step", "constant"), "cosine")
    lr_steps: list[float] = within("(0, 1)", default_factory=lambda: [0.5, 0.75])  # step: fractions of training
    lr_decay: float = within("(0, 1]", 0.1)  # step: factor at each milestone
    compute_factor: int = within("[1, 100]", 1)  # train for compute_factor x epochs: a baseline given the compute of a costlier method
    seed: int = within(SEEDS, 0)
    device: str = one_of(("auto", "cpu", "cuda"), "auto")
    precision: str = one_of(("fp32", "bf16"), "fp32")
    eval_batch_size: int = within(COUNT, 1024)
    threads: int | None = within("[1, 1024]", None)  # torch intra-op threads; None leaves torch's default

    @property
    def total_epochs(self):
        """The epochs a trial trains: epochs x compute_factor."""
        return self.epochs * self.compute_factor


@dataclass
class DensityConfig:
    runs: int = within("[1, 10000]", 1)  # stochastic Lanczos quadrature: independent Lanczos runs ...
    steps: int = within("[1, 100000]", 100)  # ... of this many Hessian-vector products each (PyHessian's defaults)


@dataclass
class HessianConfig:
    top_eigenvalue: bool = True
    trace: bool = True
    samples: int = within(COUNT, 512)
    probes: int = within("[1, 10000]", 32)
    tol: float = within("(0, inf)", 1e-3)  # relative error bound of the top eigenvalue (Lanczos); see docs/metrics.md
    max_iter: int = within("[1, 100000]", 100)
    batch_size: int = within(COUNT, 512)  # batches of the Hessian sample; one batch (>= samples) lets each HVP reuse the gradient graph
    density: DensityConfig | None = None  # the spectral density (hessian_density); null: not computed


@dataclass
class WeightNoiseConfig:
    sigmas: list[float] = within("[0, inf)", default_factory=lambda: [0.01, 0.05, 0.1])
    draws: int = within("[1, 10000]", 5)


@dataclass
class EvaluateConfig:
    ptq_bits: list[int] = within("[2, 16]", default_factory=lambda: [8, 6, 5, 4, 3, 2])
    ptq_per_channel: bool = False
    hessian: HessianConfig = field(default_factory=HessianConfig)
    weight_noise: WeightNoiseConfig = field(default_factory=WeightNoiseConfig)


@dataclass
class AshaConfig:
    grace_period: int = within("[1, inf)", 1)
    reduction_factor: float = within("(1, inf)", 3.0)


@dataclass
class ResourcesConfig:
    cpu: float = within("[0, inf)", 1.0)
    gpu: float = within("[0, inf)", 0.0)


@dataclass
class SweepConfig:
    space: dict | list[dict] = field(default_factory=dict)  # dotted key -> list (grid axis) or {dist: ...}; a list of such grids runs their union
    seeds: list[int] = within(SEEDS, default_factory=lambda: [0])
    search: str = one_of(("grid", "random", "quasirandom", "optuna"), "grid")  # how the distributions are drawn (docs/sweeps.md)
    search_seed: int = within(SEEDS, 0)  # seeds the draws of random, quasirandom and optuna search
    num_samples: int = within("[1, 10000]", 1)  # configurations drawn at each grid point (grid search: runs of each point)
    scheduler: str = one_of(("fifo", "asha"), "fifo")
    asha: AshaConfig = field(default_factory=AshaConfig)
    metric: str = "val_acc"
    mode: str = one_of(("max", "min"), "max")
    resources_per_trial: ResourcesConfig = field(default_factory=ResourcesConfig)
    max_concurrent_trials: int | None = within("[1, inf)", None)
    max_failures: int = within("[-1, inf)", 2)  # -1: retry without end (Ray's meaning)
    checkpoint_every: int = within("[1, inf)", 1)
    report_every_s: float = within("[0, inf)", 2.0)  # shorter epochs reach Ray in batches (hero_bench.sweep.trainable); 0: each at once
    confirm_seeds: list[int] = within(SEEDS, default_factory=list)  # fresh seeds for each family's chosen configuration
    bracket: int = within("[0, 10]", 0)  # rounds that extend a family's grid past an end where its choice sits


@dataclass
class TrackingConfig:
    wandb: str = one_of(("offline", "online", "disabled"), "offline")
    project: str = "hero-bench"
    entity: str | None = None
    tensorboard: bool = False  # also write Ray Tune's TensorBoard event files (off: they cost the sweep driver more than all else per epoch)


@dataclass
class Hypothesis:
    """A claim declared before the sweep runs: `method` − `baseline` on `metric` is `greater` (or
    `less`) than 0, in each group of `groups` ("all", or a mapping of group keys such as
    data.label_noise to a value or a list of values). Method and baseline are method families
    (sgd, sam, hero, gradnorm, sgd_3x, ...). Holm's adjustment runs over exactly these."""

    method: str
    baseline: str
    metric: str = "test_acc"
    direction: str = one_of(("greater", "less"), "greater")
    groups: str | dict = "all"


@dataclass
class Config:
    name: str = "experiment"
    plugins: list[str] = field(default_factory=list)  # modules registering datasets, models, methods, metrics (docs/extending.md)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    hypotheses: list[Hypothesis] = field(default_factory=list)

    def to_dict(self):
        return dataclasses.asdict(self)


# Names resolve against the registries, so an unknown one fails at the door.
REGISTRIES = {"data.name": data.DATASETS, "model.name": models.MODELS, "optimizer.name": methods.METHODS}
FACTORY_KEYS = ("data.name", "data.args", "model.name", "model.args")  # what check_factories reads
DOTTED_MAPPINGS = ("sweep.space",)  # mappings whose keys are themselves dotted config keys


def validate(config):
    """Every field's rule, and what the rules of single fields cannot say: the name, registered
    names, the factories' keyword arguments, the seeds, resources."""
    validation.check(config)
    if not NAME_PATTERN.fullmatch(config.name) or len(config.name) > MAX_NAME:
        raise ConfigError(
            f"name must be 1 to {MAX_NAME} letters, digits, '_', '-' or '.' starting with a letter or digit "
            f"(no '/' or '..', it names a folder under results/), got {show(config.name)}"
        )
    flat = validation.flatten(config)
    for key in REGISTRIES:
        check_name(key, flat[key])
    check_factories(config)
    seeds = config.sweep.seeds
    if not seeds:
        raise ConfigError("sweep.seeds must list at least one seed")
    if len(set(seeds)) < len(seeds):
        raise ConfigError(f"sweep.seeds lists seed {next(s for s in seeds if seeds.count(s) > 1)} twice: each seed is one trial per configuration")
    resources = config.sweep.resources_per_trial
    if resources.cpu == resources.gpu == 0:
        raise ConfigError("sweep.resources_per_trial needs cpu > 0 or gpu > 0 (Ray Tune cannot place a trial that asks for nothing)")
    check_stages(config.sweep)
    for index, hypothesis in enumerate(config.hypotheses):
        check_hypothesis(f"hypotheses[{index}]", hypothesis)
    return config


def check_stages(sweep):
    """Confirmation seeds fresh, and the stages after tuning only where the configurations are known
    before the sweep runs (explicit points: hero_bench.sweep.stages)."""
    again = sorted(set(sweep.confirm_seeds) & set(sweep.seeds))
    if again:
        raise ConfigError(f"sweep.confirm_seeds must be fresh seeds, not in sweep.seeds: {again[0]} is in both")
    if len(set(sweep.confirm_seeds)) < len(sweep.confirm_seeds):
        raise ConfigError("sweep.confirm_seeds lists a seed twice")
    if (sweep.confirm_seeds or sweep.bracket) and sweep.search == "optuna":
        raise ConfigError("sweep.confirm_seeds and sweep.bracket need configurations known before the sweep runs: "
                          "sweep.search grid, random or quasirandom, not optuna")


def check_hypothesis(where, hypothesis):
    """A hypothesis names method families, a metric the catalog declares with a direction, and groups by
    the keys that make a group."""
    for role in ("method", "baseline"):
        name = getattr(hypothesis, role)
        if not rules.is_family(name):
            raise ConfigError(f"{where}.{role}: {show(name)} is no method family; a family is a method "
                              f"({', '.join(methods.METHODS.names())}) or one trained k times as long (sgd_3x)")
    entry = catalog.describe(hypothesis.metric)
    if entry is None or entry.metric.text or entry.metric.higher_is_better is None:
        raise ConfigError(f"{where}.metric: {show(hypothesis.metric)} is not a metric with a better direction; "
                          "e.g. test_acc, test_acc_at_best_val, ptq_drop_3bit")
    if isinstance(hypothesis.groups, str) and hypothesis.groups != "all":
        raise ConfigError(f"{where}.groups must be 'all' or a mapping of {', '.join(GROUP_KEYS)} to values, "
                          f"got {show(hypothesis.groups)}")
    unknown = sorted(set(hypothesis.groups) - set(GROUP_KEYS)) if isinstance(hypothesis.groups, dict) else []
    if unknown:
        raise ConfigError(f"{where}.groups.{unknown[0]} is not a group key; groups are made by {', '.join(GROUP_KEYS)}")


def check_name(key, name):
    registry = REGISTRIES[key]
    if name not in registry:
        raise ConfigError(f"{key}: unknown {registry.kind} {show(name)}; known: {', '.join(registry.names())}")


def check_factories(config):
    """data.args must be keyword arguments of the chosen dataset, with values it can load; model.args
    keyword arguments of the chosen model, with values it can build; optimizer.args those of the
    chosen method."""
    data.check_args(config.data.name, config.data.args)
    models.check_args(config.model.name, config.model.args)
    methods.check_args(config.optimizer.name, config.optimizer.args)


def check_value(key, value):
    """Check one dotted key's value as the schema would (type, rule, registered name) and return it
    coerced; keys under a free-form mapping (model.args.hidden) are returned as they are."""
    value = validation.check_value(Config, key, value)
    if key in REGISTRIES:
        check_name(key, value)
    return value


def for_trial(base, params):
    """The Config of one trial: `base` with the swept values `params` (dotted key -> value) set.

    Every value was checked by `check_value` when the sweep was read, so only the factories' keyword
    arguments, which depend on the combination (a swept model.name with the base's model.args), are
    checked again. The experiment's plugins are imported first (by name: a trial on another node
    finds them where the sweep shipped them), so their names resolve.
    """
    plugins.load(base.plugins)
    raw = base.to_dict()
    for key, value in params.items():
        set_dotted(raw, key, value)
    config = validation.build(Config, raw)
    check_factories(config)
    return config


def set_dotted(raw, key, value):
    """Set `key` (dotted) in the nested mapping `raw`; the key must exist in the schema."""
    return validation.set_dotted(Config, raw, key, value, DOTTED_MAPPINGS)


def from_dict(raw, folders=()):
    """Build and validate a Config from a nested mapping (as read from YAML), after importing its
    plugins (looked up in `folders` first, then on Python's path) and the installed ones."""
    if not isinstance(raw, dict):
        raise ConfigError(f"an experiment file must be a YAML mapping of sections, got {type(raw).__name__}")
    plugins.load(check_value("plugins", raw.get("plugins", [])), folders)
    return validate(validation.build(Config, raw))


def load(path, overrides=(), plugin_names=()):
    """Read an experiment file, apply `key=value` overrides, add the modules `plugin_names` (--plugin)
    to its plugins, validate, return a Config. Plugins are found next to the file, in the current
    folder or on Python's path. The file (or a --set) must give the experiment's name: it names
    results/<name>/."""
    raw = read_yaml(path)
    for text in overrides:
        set_dotted(raw, *parse_override(text))
    if plugin_names:
        listed = check_value("plugins", raw.get("plugins", []))
        raw["plugins"] = listed + [name for name in dict.fromkeys(plugin_names) if name not in listed]
    if "name" not in raw:
        raise ConfigError(f"{path} has no name: give the experiment one (`name: my_experiment`), it names results/<name>/")
    return from_dict(raw, folders=(Path(path).parent, Path.cwd()))
