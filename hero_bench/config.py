"""The experiment schema: one YAML file, validated once at load, plain data afterwards.

Every section is a dataclass. `from_dict` rejects unknown keys, wrong types and out-of-range values
with the dotted key and what is allowed, resolves names against the registries and checks the
keyword arguments of the dataset and model factories; deeper code trusts the result. `--set
key.sub=value` overrides are parsed as YAML scalars (never evaluated) and applied before validation.
A sweep's trial is the experiment's Config with its swept values set (`for_trial`), each value
checked once at the door (`check_value`). README, "Experiment files", shows a whole file.

YAML is read as plain data: no tags that build objects, no key given twice, aliases expanded into
copies under a cap on values and nesting (a "billion laughs" file is refused at load rather than
expanded by a later copy), and `1e-3` is a number, as in YAML 1.2.
"""
import dataclasses
import itertools
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hero_bench import data, methods, models
from hero_bench.errors import ConfigError

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # matched whole (fullmatch): "rt\n" is not a name
MAX_NAME = 100  # it names folders (results/, Ray's storage, W&B's group); longer ones break on some systems
MAX_SEED = 2**32 - 1  # numpy's and torch's generators both take every seed up to here
MAX_FILE_BYTES = 2**20  # an experiment file is a page of YAML; a bigger file is the wrong file
MAX_VALUES = 100_000  # values of a file with its aliases expanded
MAX_DEPTH = 20  # nesting levels of a file (sections, a grid, a list in model.args: about 5)
TOO_DEEP = f"nests deeper than {MAX_DEPTH} levels (an experiment needs about 5; an alias inside its own anchor never ends)"


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None  # None: a per-user cache folder
    download: bool = False
    val_fraction: float = 0.1
    label_noise: float = 0.0
    label_noise_kind: str = "uniform"  # uniform: re-drawn over all K classes | flip: moved to another class
    args: dict = field(default_factory=dict)  # extra keyword arguments of the dataset factory


@dataclass
class ModelConfig:
    name: str = "mlp"
    args: dict = field(default_factory=dict)  # extra keyword arguments of the model factory


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"  # cosine | step | constant
    lr_steps: list[float] = field(default_factory=lambda: [0.5, 0.75])  # step: fractions of training
    lr_decay: float = 0.1  # step: factor at each milestone
    compute_factor: int = 1  # train for compute_factor x epochs: a baseline given the compute of a costlier method
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16
    eval_batch_size: int = 1024
    threads: int | None = None  # torch intra-op threads; None leaves torch's default
    fail_at_epoch: int | None = None  # fault injection for tests: raise once at this epoch of a fresh start

    @property
    def total_epochs(self):
        """The epochs a trial trains: epochs x compute_factor."""
        return self.epochs * self.compute_factor


@dataclass
class OptimizerConfig:
    name: str = "sgd"  # sgd | gradnorm | sam | hero
    radius: float | None = None  # None: the method's default (sam, hero 0.5)
    hessian_coef: float | None = None  # None: the method's default (hero 5.0, gradnorm 0.1)
    adaptive: bool = True
    hvp: str = "auto"  # auto | fd | exact
    hvp_check_every: int = 50
    hessian_every: int = 1
    hessian_warmup_epochs: int = 0  # the Hessian term is off for the first k epochs (the authors' script: 1)


@dataclass
class DensityConfig:
    runs: int = 1  # stochastic Lanczos quadrature: independent Lanczos runs ...
    steps: int = 100  # ... of this many Hessian-vector products each (PyHessian's defaults)


@dataclass
class HessianConfig:
    top_eigenvalue: bool = True
    trace: bool = True
    samples: int = 512
    probes: int = 32
    tol: float = 1e-3  # relative error bound of the top eigenvalue (Lanczos)
    max_iter: int = 100
    batch_size: int = 512  # batches of the Hessian sample; one batch (>= samples) lets each HVP reuse the gradient graph
    density: DensityConfig | None = None  # the spectral density (hessian_density); null: not computed


@dataclass
class WeightNoiseConfig:
    sigmas: list[float] = field(default_factory=lambda: [0.01, 0.05, 0.1])
    draws: int = 5


@dataclass
class EvaluateConfig:
    ptq_bits: list[int] = field(default_factory=lambda: [8, 6, 5, 4, 3, 2])
    ptq_per_channel: bool = False
    hessian: HessianConfig = field(default_factory=HessianConfig)
    weight_noise: WeightNoiseConfig = field(default_factory=WeightNoiseConfig)


@dataclass
class AshaConfig:
    grace_period: int = 1
    reduction_factor: float = 3.0


@dataclass
class ResourcesConfig:
    cpu: float = 1.0
    gpu: float = 0.0


@dataclass
class SweepConfig:
    space: dict | list[dict] = field(default_factory=dict)  # dotted key -> list (grid axis) or {dist: ...}; a list of such grids runs their union
    seeds: list[int] = field(default_factory=lambda: [0])
    search: str = "grid"  # grid | random | optuna
    num_samples: int = 1
    scheduler: str = "fifo"  # fifo | asha
    asha: AshaConfig = field(default_factory=AshaConfig)
    metric: str = "val_acc"
    mode: str = "max"
    resources_per_trial: ResourcesConfig = field(default_factory=ResourcesConfig)
    max_concurrent_trials: int | None = None
    max_failures: int = 2
    checkpoint_every: int = 1


@dataclass
class TrackingConfig:
    wandb: str = "offline"  # offline | online | disabled
    project: str = "hero-bench"
    entity: str | None = None
    tensorboard: bool = False  # also write Ray Tune's TensorBoard event files (off: they cost the sweep driver more than all else per epoch)


@dataclass
class Config:
    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self):
        return dataclasses.asdict(self)


CHOICES = {
    "data.label_noise_kind": data.NOISE_KINDS,
    "train.schedule": ("cosine", "step", "constant"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.precision": ("fp32", "bf16"),
    "optimizer.hvp": ("auto", "fd", "exact"),
    "sweep.search": ("grid", "random", "optuna"),
    "sweep.scheduler": ("fifo", "asha"),
    "sweep.mode": ("max", "min"),
    "tracking.wandb": ("offline", "online", "disabled"),
}

# key -> (low, high, low_inclusive, high_inclusive); None means unbounded on that side. Every float is
# also finite. Upper bounds sit where a larger value is a typo (an extra zero) rather than an experiment.
RANGES = {
    "data.val_fraction": (0, 1, False, False),
    "data.label_noise": (0, 1, True, False),
    "train.epochs": (1, 100_000, True, True),
    "train.compute_factor": (1, 100, True, True),
    "train.batch_size": (1, 2**20, True, True),
    "train.lr": (0, None, False, None),
    "train.momentum": (0, 1, True, False),
    "train.weight_decay": (0, None, True, None),
    "train.lr_steps": (0, 1, False, False),
    "train.lr_decay": (0, 1, False, True),
    "train.seed": (0, MAX_SEED, True, True),
    "train.eval_batch_size": (1, 2**20, True, True),
    "train.threads": (1, 1024, True, True),
    "train.fail_at_epoch": (1, None, True, None),
    "optimizer.radius": (0, None, True, None),
    "optimizer.hessian_coef": (0, None, True, None),
    "optimizer.hvp_check_every": (1, None, True, None),
    "optimizer.hessian_every": (1, None, True, None),
    "optimizer.hessian_warmup_epochs": (0, None, True, None),
    "evaluate.ptq_bits": (2, 16, True, True),
    "evaluate.hessian.samples": (1, 2**20, True, True),
    "evaluate.hessian.probes": (1, 10_000, True, True),
    "evaluate.hessian.tol": (0, None, False, None),
    "evaluate.hessian.max_iter": (1, 100_000, True, True),
    "evaluate.hessian.batch_size": (1, 2**20, True, True),
    "evaluate.hessian.density.runs": (1, 10_000, True, True),
    "evaluate.hessian.density.steps": (1, 100_000, True, True),
    "evaluate.weight_noise.sigmas": (0, None, True, None),
    "evaluate.weight_noise.draws": (1, 10_000, True, True),
    "sweep.seeds": (0, MAX_SEED, True, True),
    "sweep.num_samples": (1, 10_000, True, True),
    "sweep.asha.grace_period": (1, None, True, None),
    "sweep.asha.reduction_factor": (1, None, False, None),
    "sweep.resources_per_trial.cpu": (0, None, True, None),
    "sweep.resources_per_trial.gpu": (0, None, True, None),
    "sweep.max_concurrent_trials": (1, None, True, None),
    "sweep.max_failures": (-1, None, True, None),  # -1: retry without end (Ray's meaning)
    "sweep.checkpoint_every": (1, None, True, None),
}


def _section(tp):
    """The dataclass of a section's type hint (`X` or an optional `X | None`), else None."""
    options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return next((option for option in options if dataclasses.is_dataclass(option)), None)


def _type_name(tp):
    if dataclasses.is_dataclass(tp):
        return f"a mapping with keys {', '.join(f.name for f in dataclasses.fields(tp))}"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(t) for t in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        item = _type_name(typing.get_args(tp)[0])
        return f"a list of {item[2:]}s" if item.startswith("a ") else f"a list of {item}"  # of mappings, of int
    return {type(None): "null", dict: "a mapping", float: "a finite number"}.get(tp, getattr(tp, "__name__", str(tp)))


def _show(value):
    """repr(value) cut to one readable length: a message stays one short line whatever the value."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _finite(value):
    """float(value) when it is a finite number (int or float, not bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if abs(value) <= sys.float_info.max else None  # False for NaN, inf and ints past any float


def _coerce(value, tp, key):
    """Return `value` as type `tp` or raise ConfigError naming `key`. Ints are accepted as floats;
    a float must be finite (NaN passes every `<` check); a mapping's keys must be text."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if isinstance(value, dict) and _section(tp) is not None:
            return _build(_section(tp), value, key + ".")  # an optional section: its own keys' errors
        for option in typing.get_args(tp):
            container = list if typing.get_origin(option) is list else dict if option is dict else None
            if container is not None and isinstance(value, container):
                return _coerce(value, option, key)  # the option of the value's shape: its error says what is wrong inside
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
    elif origin is list:
        if isinstance(value, list):
            return [_coerce(item, typing.get_args(tp)[0], key) for item in value]
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _build(tp, value, key + ".")
    elif tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if (number := _finite(value)) is not None:
            return number
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is dict:
        if isinstance(value, dict):
            for name in value:
                if not isinstance(name, str):
                    raise ConfigError(f"{key} keys must be text, got {_show(name)}")
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"{key} must be {_type_name(tp)}, got {_show(value)}")


def _build(cls, raw, prefix=""):
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(known), key=str)
    if unknown:
        raise ConfigError(f"unknown key {_show(prefix + str(unknown[0]))}; allowed in this section: {', '.join(known)}")
    values = {}
    for name in known:
        if name in raw:
            values[name] = _coerce(raw[name], hints[name], prefix + name)
    return cls(**values)


def _check_rules(key, value):
    """The CHOICES and RANGES rules of one dotted key (every item of a list)."""
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{key} must be one of {', '.join(CHOICES[key])}, got {_show(value)}")
    if key not in RANGES:
        return
    low, high, low_inclusive, high_inclusive = RANGES[key]
    for item in value if isinstance(value, list) else [value]:
        if item is None:
            continue
        too_low = low is not None and (item < low if low_inclusive else item <= low)
        too_high = high is not None and (item > high if high_inclusive else item >= high)
        if too_low or too_high:
            left = ("[" if low_inclusive else "(") + ("-inf" if low is None else str(low))
            right = ("inf" if high is None else str(high)) + ("]" if high_inclusive else ")")
            raise ConfigError(f"{key} must be in {left}, {right}, got {_show(item)}")


def _flatten(obj, prefix=""):
    """Dotted key -> value for every leaf of a (nested) dataclass."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_flatten(value, prefix + f.name + "."))
        else:
            out[prefix + f.name] = value
    return out


def validate(config):
    """Range, choice and name checks that types alone cannot express."""
    flat = _flatten(config)
    for key, value in flat.items():
        _check_rules(key, value)
    if not NAME_PATTERN.fullmatch(config.name) or len(config.name) > MAX_NAME:
        raise ConfigError(
            f"name must be 1 to {MAX_NAME} letters, digits, '_', '-' or '.' starting with a letter or digit "
            f"(no '/' or '..', it names a folder under results/), got {_show(config.name)}"
        )
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
    return config


# Names resolve against the registries, so an unknown one fails at the door.
REGISTRIES = {"data.name": data.DATASETS, "model.name": models.MODELS, "optimizer.name": methods.METHODS}


def check_name(key, name):
    registry = REGISTRIES[key]
    if name not in registry:
        raise ConfigError(f"{key}: unknown {registry.kind} {_show(name)}; known: {', '.join(registry.names())}")


FACTORY_KEYS = ("data.name", "data.args", "model.name", "model.args")  # what check_factories reads


def check_factories(config):
    """data.args must be keyword arguments of the chosen dataset; model.args keyword arguments of the
    chosen model, with values it can build."""
    data.DATASETS.check(config.data.name, config.data.args, "data.args", skip=data.FACTORY_ARGS)
    models.check_args(config.model.name, config.model.args)


def check_value(key, value):
    """Check one dotted key's value as the schema would (type, range, choice, registered name) and
    return it coerced; keys under a free-form mapping (model.args.hidden) are returned as they are."""
    cls, parts = Config, key.split(".")
    for depth, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            raise ConfigError(f"unknown key {_show(key)}: {_show('.'.join(parts[:depth + 1]))} is not in the schema; allowed: {', '.join(names)}")
        hint = typing.get_type_hints(cls)[part]
        if depth == len(parts) - 1 or _section(hint) is None:
            break
        cls = _section(hint)
    if depth < len(parts) - 1:
        if not (hint is dict or dict in typing.get_args(hint)):
            raise ConfigError(f"unknown key {_show(key)}: {_show('.'.join(parts[:depth + 1]))} is a value, not a section")
        return value
    value = _coerce(value, hint, key)
    _check_rules(key, value)
    if key in REGISTRIES:
        check_name(key, value)
    return value


def for_trial(base, params):
    """The Config of one trial: `base` with the swept values `params` (dotted key -> value) set.

    Every value was checked by `check_value` when the sweep was read, so only the factories' keyword
    arguments, which depend on the combination (a swept model.name with the base's model.args), are
    checked again.
    """
    raw = base.to_dict()
    for key, value in params.items():
        set_dotted(raw, key, value)
    config = _build(Config, raw)
    check_factories(config)
    return config


def from_dict(raw):
    """Build and validate a Config from a nested mapping (as read from YAML)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"an experiment file must be a YAML mapping of sections, got {type(raw).__name__}")
    return validate(_build(Config, raw))


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data only) that also refuses a key given twice in one mapping,
    naming the key and both lines; a merge key's (`<<: *base`) keys may still be overridden."""

    def construct_mapping(self, node, deep=False):
        lines = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue  # PyYAML itself refuses a key that is a list or a mapping
            key = self.construct_object(key_node)
            if key in lines:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {_show(key)} (first at line {lines[key]})", key_node.start_mark)
            lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # a date like 2024-13-45, an int of 5000 digits
            reason = str(exc).split(";")[0]  # Python's advice after the ';' is for programmers
            raise yaml.constructor.ConstructorError(None, None, f"cannot read {_show(node.value)}: {reason}", node.start_mark) from None


# YAML 1.2 reads 1e-3 as a number; PyYAML (YAML 1.1) would read it as the text '1e-3'.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"), list("-+0123456789."))


def _as_tree(value, where, counter, depth=0):
    """`value` with every shared (aliased) part copied, so no later deep copy or dump multiplies it:
    refused past MAX_VALUES values or MAX_DEPTH levels (an alias inside its own anchor never ends)."""
    if next(counter) >= MAX_VALUES:
        raise ConfigError(f"{where} expands to more than {MAX_VALUES:,} values (aliases of aliases?); an experiment needs far fewer")
    if depth > MAX_DEPTH:
        raise ConfigError(f"{where} {TOO_DEEP}")
    if isinstance(value, dict):
        return {key: _as_tree(item, where, counter, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_tree(item, where, counter, depth + 1) for item in value]
    return value


def parse_yaml(text, where):
    """YAML text -> plain data (see the module docstring); `where` names it in every error."""
    try:
        value = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"malformed YAML in {where}{at}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{where} {TOO_DEEP}") from None
    return _as_tree(value, where, itertools.count())


def parse_override(text):
    """'a.b=value' -> ('a.b', value) with value parsed as a YAML scalar or flow list, never evaluated."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value (e.g. optimizer.radius=0.5), got {_show(text)}")
    key, _, raw_value = text.partition("=")
    key = key.strip()
    value = parse_yaml(raw_value, f"--set {key}") if raw_value.strip() else None
    return key, value


def set_dotted(raw, key, value):
    """Set `key` (dotted) in the nested mapping `raw`; the key must exist in the schema."""
    cls, node, parts = Config, raw, key.split(".")
    for depth, part in enumerate(parts):
        names = {f.name: f for f in dataclasses.fields(cls)}
        if part not in names:
            raise ConfigError(f"unknown key {_show(key)}: {_show('.'.join(parts[:depth + 1]))} is not in the schema; allowed: {', '.join(names)}")
        if depth == len(parts) - 1:
            node[part] = value
            return raw
        hint = typing.get_type_hints(cls)[part]
        if _section(hint) is None:
            # a free-form mapping such as model.args or sweep.space: any sub-key is allowed
            if hint is dict or dict in typing.get_args(hint):
                # its keys are themselves dotted config keys in sweep.space
                inner = [".".join(parts[depth + 1:])] if key.startswith("sweep.space.") else parts[depth + 1:]
                sub = node.setdefault(part, {})
                for index, name in enumerate(inner):
                    if not isinstance(sub, dict):
                        where = ".".join(parts[:depth + 1] + inner[:index])
                        raise ConfigError(f"cannot set {_show(key)}: {where} is {type(sub).__name__}, not a mapping")
                    if index == len(inner) - 1:
                        sub[name] = value
                    else:
                        sub = sub.setdefault(name, {})
                return raw
            raise ConfigError(f"unknown key {_show(key)}: {_show('.'.join(parts[:depth + 1]))} is a value, not a section")
        if node.get(part) is None:  # absent, or an optional section left null: setting a key opens it
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(parts[:depth + 1])} must be a mapping")
        cls = _section(hint)


def read_yaml(path):
    """The experiment file at `path` as plain data: a UTF-8 YAML mapping of at most MAX_FILE_BYTES."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"experiment file {str(path)!r} does not exist")
    if not path.is_file():
        raise ConfigError(f"experiment file {str(path)!r} is not a file")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"experiment file {path} is {size:,} bytes; an experiment file is YAML text of at most {MAX_FILE_BYTES:,}")
        content = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read experiment file {path}: {exc.strerror or exc}") from None
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"experiment file {path} is not UTF-8 text (byte 0x{content[exc.start]:02x} at offset {exc.start})") from None
    raw = parse_yaml(text, path)
    if raw is None:
        raise ConfigError(f"experiment file {path} is empty; see experiments/quickstart.yaml for one")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: an experiment file must be a YAML mapping of sections, got {type(raw).__name__}")
    return raw


def load(path, overrides=()):
    """Read an experiment file, apply `key=value` overrides, validate, return a Config. The file (or
    a --set) must give the experiment's name: it names results/<name>/."""
    raw = read_yaml(path)
    for text in overrides:
        set_dotted(raw, *parse_override(text))
    if "name" not in raw:
        raise ConfigError(f"{path} has no name: give the experiment one (`name: my_experiment`), it names results/<name>/")
    return from_dict(raw)
