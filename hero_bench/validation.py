"""The validator: plain data (as read from YAML) -> typed dataclasses, or one line naming the key.

A schema is a tree of dataclasses whose type hints say what each key holds. A field states its own
rule once, in its metadata: `within("[0, 1)")` for a range of numbers, `one_of(...)` for a choice.
`build` turns a nested mapping into the dataclasses, refusing unknown keys and wrong types; `check`
applies every field's rule; `walk` follows a dotted key (`optimizer.radius`) through the schema and
is what `check_value` and `set_dotted` share. Every float must be finite and within float32's range
(what reaches torch is float32), every int a plain integer (not a bool). Free-form mappings (a
`dict` field such as model.args) are left to their owner to check, with the checks of one keyword
argument made here (`integer`, `integers`, `number`, `boolean`).
"""
import dataclasses
import math
import types
import typing
from dataclasses import dataclass

from hero_bench.errors import ConfigError

FLOAT32_MAX = 3.4028234663852886e38  # a larger float overflows to inf in torch's float32


@dataclass(frozen=True)
class Range:
    """An interval of allowed numbers, written as in mathematics: "[0, 1)", "(0, 1000]", "[1, inf)"."""

    low: float
    high: float
    low_inclusive: bool
    high_inclusive: bool
    text: str

    @classmethod
    def parse(cls, text):
        left, right = (part.strip() for part in text[1:-1].split(","))
        return cls(float(left), float(right), text[0] == "[", text[-1] == "]", text)

    def __contains__(self, value):
        above = value >= self.low if self.low_inclusive else value > self.low
        below = value <= self.high if self.high_inclusive else value < self.high
        return above and below


def within(interval, default=dataclasses.MISSING, **kwargs):
    """A dataclass field whose value (every item, for a list) must lie in `interval` ("[0, 1)")."""
    return dataclasses.field(default=default, metadata={"range": Range.parse(interval)}, **kwargs)


def one_of(choices, default=dataclasses.MISSING, **kwargs):
    """A dataclass field whose value must be one of `choices`."""
    return dataclasses.field(default=default, metadata={"choices": tuple(choices)}, **kwargs)


def integer(interval):
    """The check of a factory's keyword argument (model.args, data.args) that must be one integer in
    `interval`: check(dotted key, value) raises ConfigError naming the key."""
    allowed = Range.parse(interval)

    def check(key, value):
        if not _integer_in(value, allowed):
            raise ConfigError(f"{key} must be an integer in {interval}, got {show(value)}")
    return check


def integers(interval, length=None):
    """The check of a list of integers in `interval` (of `length` of them, when given)."""
    allowed, count = Range.parse(interval), "" if length is None else f"{length} "

    def check(key, value):
        if not (isinstance(value, (list, tuple)) and (length is None or len(value) == length)
                and all(_integer_in(v, allowed) for v in value)):
            raise ConfigError(f"{key} must be a list of {count}integers in {interval}, got {show(value)}")
    return check


def number(interval):
    """The check of a finite number (within float32's range) in `interval`."""
    allowed = Range.parse(interval)

    def check(key, value):
        if finite(value) is None or value not in allowed:
            raise ConfigError(f"{key} must be a number in {interval}, got {show(value)}")
    return check


def boolean(key, value):
    """The check of true or false."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {show(value)}")


def _integer_in(value, allowed):
    return isinstance(value, int) and not isinstance(value, bool) and value in allowed


def show(value):
    """repr(value) cut to one readable length: a message stays one short line whatever the value."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def section(tp):
    """The dataclass of a section's type hint (`X` or an optional `X | None`), else None."""
    options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return next((option for option in options if dataclasses.is_dataclass(option)), None)


def is_mapping(tp):
    """Whether a type hint is a free-form mapping (`dict`, possibly among other options)."""
    return tp is dict or dict in typing.get_args(tp)


def type_name(tp):
    if dataclasses.is_dataclass(tp):
        return f"a mapping with keys {', '.join(f.name for f in dataclasses.fields(tp))}"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(type_name(t) for t in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        item = type_name(typing.get_args(tp)[0])
        return f"a list of {item[2:]}s" if item.startswith("a ") else f"a list of {item}"  # of mappings, of int
    return {type(None): "null", dict: "a mapping", float: "a finite number"}.get(tp, getattr(tp, "__name__", str(tp)))


def finite(value):
    """float(value) when it is a number (int or float, not bool) within float32's finite range, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if abs(value) <= FLOAT32_MAX else None  # False for NaN and inf too


def coerce(value, tp, key):
    """Return `value` as type `tp` or raise ConfigError naming `key`. Ints are accepted as floats;
    a float must be finite (NaN passes every `<` check); a mapping's keys must be text."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if isinstance(value, dict) and section(tp) is not None:
            return build(section(tp), value, key + ".")  # an optional section: its own keys' errors
        for option in typing.get_args(tp):
            container = list if typing.get_origin(option) is list else dict if option is dict else None
            if container is not None and isinstance(value, container):
                return coerce(value, option, key)  # the option of the value's shape: its error says what is wrong inside
        for option in typing.get_args(tp):
            try:
                return coerce(value, option, key)
            except ConfigError:
                pass
    elif origin is list:
        if isinstance(value, list):
            item = typing.get_args(tp)[0]
            where = (lambda i: f"{key}[{i}]") if dataclasses.is_dataclass(item) else (lambda i: key)  # hypotheses[0]
            return [coerce(v, item, where(i)) for i, v in enumerate(value)]
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return build(tp, value, key + ".")
    elif tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if (number := finite(value)) is not None:
            return number
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is dict:
        if isinstance(value, dict):
            for name in value:
                if not isinstance(name, str):
                    raise ConfigError(f"{key} keys must be text, got {show(name)}")
            return value
    elif isinstance(value, tp):
        return value
    if float in (tp, *typing.get_args(tp)) and _beyond_float32(value):
        raise ConfigError(f"{key} must be {type_name(tp)} within float32's range (|x| <= 3.4e38), got {show(value)}")
    raise ConfigError(f"{key} must be {type_name(tp)}, got {show(value)}")


def _beyond_float32(value):
    """A number that Python holds as a finite float but float32 cannot (3.4e38 < |x| < 1.8e308)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value)) and abs(value) > FLOAT32_MAX
    except OverflowError:  # an int past any float
        return False


def build(cls, raw, prefix=""):
    """The dataclass `cls` from the mapping `raw` (typed, unknown keys refused); rules not yet checked."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(known), key=str)
    if unknown:
        raise ConfigError(f"unknown key {show(prefix + str(unknown[0]))}; allowed in this section: {', '.join(known)}")
    for f in dataclasses.fields(cls):
        if f.name not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix.rstrip('.')}: {f.name} is required")
    return cls(**{name: coerce(raw[name], hints[name], prefix + name) for name in known if name in raw})


def check_rule(metadata, key, value):
    """The field's rule (its metadata's range or choices) for `key`'s value (every item of a list)."""
    choices = metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}, got {show(value)}")
    allowed = metadata.get("range")
    if allowed is None:
        return
    for item in value if isinstance(value, list) else [value]:
        if item is not None and item not in allowed:
            raise ConfigError(f"{key} must be in {allowed.text}, got {show(item)}")


def check(obj, prefix=""):
    """Every field rule of a built dataclass tree; returns `obj`."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check(value, prefix + f.name + ".")
        elif isinstance(value, list) and value and all(dataclasses.is_dataclass(item) for item in value):
            for index, item in enumerate(value):
                check(item, f"{prefix}{f.name}[{index}].")
        else:
            check_rule(f.metadata, prefix + f.name, value)
    return obj


def flatten(obj, prefix=""):
    """Dotted key -> value for every leaf of a (nested) dataclass."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, prefix + f.name + "."))
        else:
            out[prefix + f.name] = value
    return out


@dataclass
class Step:
    """Where `walk` got to: the field `name` of section `cls` (its type hint `hint`, its dataclass
    Field `field`), reached by the parts of the key up to `depth`."""

    cls: type
    name: str
    hint: object
    field: dataclasses.Field
    depth: int


def walk(root, key):
    """The fields a dotted key passes through in the schema `root`, from the top down, ending at the
    key's own field or at a free-form mapping (model.args, sweep.space) that holds the rest of the
    key. Refuses a part that is not in the schema, or a key that goes on past a value."""
    cls, parts, steps = root, key.split("."), []
    for depth, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            raise ConfigError(f"unknown key {show(key)}: {show('.'.join(parts[:depth + 1]))} is not in the schema; "
                              f"allowed: {', '.join(fields)}")
        hint = typing.get_type_hints(cls)[part]
        steps.append(Step(cls, part, hint, fields[part], depth))
        if depth == len(parts) - 1 or section(hint) is None:
            break
        cls = section(hint)
    last = steps[-1]
    if last.depth < len(parts) - 1 and not is_mapping(last.hint):
        raise ConfigError(f"unknown key {show(key)}: {show('.'.join(parts[:last.depth + 1]))} is a value, not a section")
    return steps


def check_value(root, key, value):
    """Check one dotted key's value as the schema `root` would (type and rule) and return it coerced;
    a key under a free-form mapping (model.args.hidden) is returned as it is, for its owner to check."""
    last = walk(root, key)[-1]
    if last.depth < len(key.split(".")) - 1:
        return value
    value = coerce(value, last.hint, key)
    check_rule(last.field.metadata, key, value)
    return value


def set_dotted(root, raw, key, value, dotted_keys=()):
    """Set `key` (dotted) in the nested mapping `raw` shaped like the schema `root`. Under a free-form
    mapping the rest of the key nests further (model.args.hidden), except in the mappings named in
    `dotted_keys`, whose keys are themselves dotted keys (sweep.space)."""
    parts = key.split(".")
    steps = walk(root, key)
    node = raw
    for step in steps[:-1]:
        if node.get(step.name) is None:  # absent, or an optional section left null: setting a key opens it
            node[step.name] = {}
        node = node[step.name]
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(parts[:step.depth + 1])} must be a mapping")
    last = steps[-1]
    rest = parts[last.depth + 1:]
    if not rest:
        node[last.name] = value
        return raw
    mapping_key = ".".join(parts[:last.depth + 1])
    inner = [".".join(rest)] if mapping_key in dotted_keys else rest
    sub = node.setdefault(last.name, {})
    for index, name in enumerate(inner):
        if not isinstance(sub, dict):
            where = ".".join(parts[:last.depth + 1] + inner[:index])
            raise ConfigError(f"cannot set {show(key)}: {where} is {type(sub).__name__}, not a mapping")
        if index == len(inner) - 1:
            sub[name] = value
        else:
            sub = sub.setdefault(name, {})
    return raw
