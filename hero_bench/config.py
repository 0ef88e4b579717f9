"""The experiment schema: one YAML file, validated once at load, plain data afterwards.

Every section is a dataclass. `from_dict` rejects unknown keys, wrong types and out-of-range values
with the dotted key and what is allowed, resolves names against the registries and checks the
keyword arguments of the dataset and model factories; deeper code trusts the result. `--set
key.sub=value` overrides are parsed as YAML scalars (never evaluated) and applied before validation.
A sweep's trial is the experiment's Config with its swept values set (`for_trial`), each value
checked once at the door (`check_value`). README, "Experiment files", shows a whole file.
"""
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hero_bench import data, methods, models
from hero_bench.errors import ConfigError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None  # None: a per-user cache folder
    download: bool = False
    val_fraction: float = 0.1
    label_noise: float = 0.0
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
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16
    eval_batch_size: int = 1024
    threads: int | None = None  # torch intra-op threads; None leaves torch's default
    fail_at_epoch: int | None = None  # fault injection for tests: raise once at this epoch of a fresh start


@dataclass
class OptimizerConfig:
    name: str = "sgd"  # sgd | gradnorm | sam | hero
    radius: float | None = None  # None: the method's default (sam, hero 0.5)
    hessian_coef: float | None = None  # None: the method's default (hero 5.0, gradnorm 0.1)
    adaptive: bool = True
    hvp: str = "auto"  # auto | fd | exact
    hvp_check_every: int = 50
    hessian_every: int = 1


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
    "train.schedule": ("cosine", "step", "constant"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.precision": ("fp32", "bf16"),
    "optimizer.hvp": ("auto", "fd", "exact"),
    "sweep.search": ("grid", "random", "optuna"),
    "sweep.scheduler": ("fifo", "asha"),
    "sweep.mode": ("max", "min"),
    "tracking.wandb": ("offline", "online", "disabled"),
}

# key -> (low, high, low_inclusive, high_inclusive); None means unbounded on that side.
RANGES = {
    "data.val_fraction": (0, 1, False, False),
    "data.label_noise": (0, 1, True, False),
    "train.epochs": (1, None, True, None),
    "train.batch_size": (1, None, True, None),
    "train.lr": (0, None, False, None),
    "train.momentum": (0, 1, True, False),
    "train.weight_decay": (0, None, True, None),
    "train.lr_decay": (0, 1, False, True),
    "train.eval_batch_size": (1, None, True, None),
    "train.threads": (1, None, True, None),
    "train.fail_at_epoch": (1, None, True, None),
    "optimizer.radius": (0, None, True, None),
    "optimizer.hessian_coef": (0, None, True, None),
    "optimizer.hvp_check_every": (1, None, True, None),
    "optimizer.hessian_every": (1, None, True, None),
    "evaluate.ptq_bits": (2, 16, True, True),
    "evaluate.hessian.samples": (1, None, True, None),
    "evaluate.hessian.probes": (1, None, True, None),
    "evaluate.hessian.tol": (0, None, False, None),
    "evaluate.hessian.max_iter": (1, None, True, None),
    "evaluate.hessian.batch_size": (1, None, True, None),
    "evaluate.hessian.density.runs": (1, None, True, None),
    "evaluate.hessian.density.steps": (1, None, True, None),
    "evaluate.weight_noise.sigmas": (0, None, True, None),
    "evaluate.weight_noise.draws": (1, None, True, None),
    "sweep.num_samples": (1, None, True, None),
    "sweep.asha.grace_period": (1, None, True, None),
    "sweep.asha.reduction_factor": (1, None, False, None),
    "sweep.resources_per_trial.cpu": (0, None, True, None),
    "sweep.resources_per_trial.gpu": (0, None, True, None),
    "sweep.max_concurrent_trials": (1, None, True, None),
    "sweep.max_failures": (-1, None, True, None),
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
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {type(None): "null", dict: "a mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value, tp, key):
    """Return `value` as type `tp` or raise ConfigError naming `key`. Ints are accepted as floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if isinstance(value, dict) and _section(tp) is not None:
            return _build(_section(tp), value, key + ".")  # an optional section: its own keys' errors
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
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")


def _build(cls, raw, prefix=""):
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"unknown key {prefix + str(unknown[0])!r}; allowed in this section: {', '.join(known)}")
    values = {}
    for name in known:
        if name in raw:
            values[name] = _coerce(raw[name], hints[name], prefix + name)
    return cls(**values)


def _check_range(key, value):
    low, high, low_inclusive, high_inclusive = RANGES[key]
    for item in value if isinstance(value, list) else [value]:
        if item is None:
            continue
        too_low = low is not None and (item < low if low_inclusive else item <= low)
        too_high = high is not None and (item > high if high_inclusive else item >= high)
        if too_low or too_high:
            left = ("[" if low_inclusive else "(") + ("-inf" if low is None else f"{low:g}")
            right = ("inf" if high is None else f"{high:g}") + ("]" if high_inclusive else ")")
            raise ConfigError(f"{key} must be in {left}, {right}, got {item!r}")


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
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"{key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
        if key in RANGES:
            _check_range(key, value)
    if not NAME_PATTERN.match(config.name):
        raise ConfigError(
            f"name must be letters, digits, '_', '-' or '.' (no '/' or '..', it names a folder under results/), got {config.name!r}"
        )
    if config.name in (".", ".."):
        raise ConfigError(f"name must not be {config.name!r}")
    for key in REGISTRIES:
        check_name(key, flat[key])
    check_factories(config)
    if config.sweep.metric in ("", None):
        raise ConfigError("sweep.metric must name a reported metric such as val_acc")
    if not config.sweep.seeds:
        raise ConfigError("sweep.seeds must list at least one seed")
    return config


# Names resolve against the registries, so an unknown one fails at the door.
REGISTRIES = {"data.name": data.DATASETS, "model.name": models.MODELS, "optimizer.name": methods.METHODS}


def check_name(key, name):
    registry = REGISTRIES[key]
    if name not in registry:
        raise ConfigError(f"{key}: unknown {registry.kind} {name!r}; known: {', '.join(registry.names())}")


def check_factories(config):
    """data.args and model.args must be keyword arguments of the chosen dataset and model."""
    data.DATASETS.check(config.data.name, config.data.args, "data.args", skip=data.FACTORY_ARGS)
    models.MODELS.check(config.model.name, config.model.args, "model.args", skip=models.FACTORY_ARGS)


def check_value(key, value):
    """Check one dotted key's value as the schema would (type, range, choice, registered name) and
    return it coerced; keys under a free-form mapping (model.args.hidden) are returned as they are."""
    cls, parts = Config, key.split(".")
    for depth, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            raise ConfigError(f"unknown key {key!r}: {'.'.join(parts[:depth + 1])!r} is not in the schema; allowed: {', '.join(names)}")
        hint = typing.get_type_hints(cls)[part]
        if depth == len(parts) - 1 or _section(hint) is None:
            break
        cls = _section(hint)
    if depth < len(parts) - 1:
        if not (hint is dict or dict in typing.get_args(hint)):
            raise ConfigError(f"unknown key {key!r}: {'.'.join(parts[:depth + 1])!r} is a value, not a section")
        return value
    value = _coerce(value, hint, key)
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
    if key in RANGES:
        _check_range(key, value)
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


def parse_override(text):
    """'a.b=value' -> ('a.b', value) with value parsed as a YAML scalar or flow list, never evaluated."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value (e.g. optimizer.radius=0.5), got {text!r}")
    key, _, raw_value = text.partition("=")
    key = key.strip()
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw_value!r}: {exc.problem}") from None
    return key, value


def set_dotted(raw, key, value):
    """Set `key` (dotted) in the nested mapping `raw`; the key must exist in the schema."""
    cls, node, parts = Config, raw, key.split(".")
    for depth, part in enumerate(parts):
        names = {f.name: f for f in dataclasses.fields(cls)}
        if part not in names:
            raise ConfigError(f"unknown key {key!r}: {'.'.join(parts[:depth + 1])!r} is not in the schema; allowed: {', '.join(names)}")
        if depth == len(parts) - 1:
            node[part] = value
            return raw
        hint = typing.get_type_hints(cls)[part]
        if _section(hint) is None:
            # a free-form mapping such as model.args or sweep.space: any sub-key is allowed
            if hint is dict or dict in typing.get_args(hint):
                sub = node.setdefault(part, {})
                if key.startswith("sweep.space."):  # its keys are themselves dotted config keys
                    sub[".".join(parts[depth + 1:])] = value
                    return raw
                for inner in parts[depth + 1:-1]:
                    sub = sub.setdefault(inner, {})
                sub[parts[-1]] = value
                return raw
            raise ConfigError(f"unknown key {key!r}: {'.'.join(parts[:depth + 1])!r} is a value, not a section")
        if node.get(part) is None:  # absent, or an optional section left null: setting a key opens it
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(parts[:depth + 1])} must be a mapping")
        cls = _section(hint)


def read_yaml(path):
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"malformed YAML in {path}{where}: {getattr(exc, 'problem', exc)}") from None
    return {} if raw is None else raw


def load(path, overrides=()):
    """Read an experiment file, apply `key=value` overrides, validate, return a Config."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: an experiment file must be a YAML mapping of sections")
    for text in overrides:
        set_dotted(raw, *parse_override(text))
    return from_dict(raw)
