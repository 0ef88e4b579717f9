"""Experiment files as plain data: UTF-8 YAML read safely, and `--set key=value` overrides.

YAML is read as plain data: no tags that build objects, no key given twice, aliases expanded into
copies under a cap on values and nesting (a "billion laughs" file is refused at load rather than
expanded by a later copy), and `1e-3` is a number, as in YAML 1.2. `--set` values are parsed as
YAML scalars or flow lists, never evaluated. What the data means is the schema's business
(hero_bench.config).
"""
import itertools
import re
from pathlib import Path

import yaml

from hero_bench.errors import ConfigError
from hero_bench.validation import show

MAX_FILE_BYTES = 2**20  # an experiment file is a page of YAML; a bigger file is the wrong file
MAX_VALUES = 100_000  # values of a file with its aliases expanded
MAX_DEPTH = 20  # nesting levels of a file (sections, a grid, a list in model.args: about 5)
TOO_DEEP = f"nests deeper than {MAX_DEPTH} levels (an experiment needs about 5; an alias inside its own anchor never ends)"


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
                    None, None, f"duplicate key {show(key)} (first at line {lines[key]})", key_node.start_mark)
            lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # a date like 2024-13-45, an int of 5000 digits
            reason = str(exc).split(";")[0]  # Python's advice after the ';' is for programmers
            raise yaml.constructor.ConstructorError(None, None, f"cannot read {show(node.value)}: {reason}", node.start_mark) from None


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
        raise ConfigError(f"--set expects key=value (e.g. optimizer.radius=0.5), got {show(text)}")
    key, _, raw_value = text.partition("=")
    key = key.strip()
    value = parse_yaml(raw_value, f"--set {key}") if raw_value.strip() else None
    return key, value


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
