"""Plugins: the user's own modules that register datasets, models, methods and metrics with
hero-bench's registries, so a benchmark of their own code needs no fork of hero-bench (docs/extending.md).

A plugin is a Python module that makes registrations when imported. It is named in an experiment's
`plugins:` list or by `--plugin MODULE`, and found next to the experiment file, in the current folder
or on Python's path (an installed package); or it is an installed package's entry point in the group
`hero_bench.plugins`, imported by every command without being named. Each name a plugin registers
records its origin ("plugin my_models (/lab/my_models.py)", "entry point extras (hero-extras 0.1)"),
which `hero-bench list` shows. A plugin that cannot be imported, or whose registration is refused (a
name already taken, a factory hero-bench cannot call), stops the command with one line; one that
registers nothing is a warning naming it.

A sweep ships the named plugins that are not installed packages to every trial, on every node, with
Ray's runtime environment (`shipped`); each trial imports them again by name (config.for_trial).
Torch-free: what a plugin imports is its own business.
"""
import importlib
import importlib.metadata
import importlib.util
import re
import site
import sys
import sysconfig
import warnings
from pathlib import Path

from hero_bench import registry
from hero_bench.errors import ConfigError, HeroBenchError, HeroBenchWarning

GROUP = "hero_bench.plugins"  # the entry-point group of installed plugin packages
MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")  # matched whole
_loaded = set()  # what this process has imported: plugin module names, and GROUP for the entry points


def load(names=(), folders=()):
    """Import every installed entry point of the group hero_bench.plugins, then the modules `names`
    (dotted module names), each looked up in `folders` first (the experiment's folder, the current
    one), then on Python's path. A plugin is imported once per process."""
    if GROUP not in _loaded:  # installed packages are looked up once: a trial's Config loads its plugins again
        for entry in importlib.metadata.entry_points(group=GROUP):
            package = f"{entry.dist.name} {entry.dist.version}" if entry.dist else entry.value
            _run(f"entry point {entry.name} ({package})", entry.load)
        _loaded.add(GROUP)
    folders = list(dict.fromkeys(str(Path(folder).resolve()) for folder in folders))
    for name in names:
        if not isinstance(name, str) or not MODULE_NAME.fullmatch(name):
            raise ConfigError(f"plugins: {name!r:.80} is not a Python module name (letters, digits and '_', parts joined by '.')")
        if name not in _loaded:
            _import(name, folders)
            _loaded.add(name)


def _import(name, folders):
    """Import plugin `name` with `folders` in front of Python's path for the time of the import; its
    origin names the file (or package) it was found in. The plugin's folder is left as it was: no
    __pycache__ is written into it."""
    added = [folder for folder in folders if folder not in sys.path]
    sys.path[:0] = added
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        importlib.invalidate_caches()  # a module file written since the last import is found
        spec = importlib.util.find_spec(name.split(".")[0])  # the top-level module: found, not imported
        if spec is None:
            searched = f"in {', '.join(folders)} or " if folders else ""
            raise ConfigError(f"plugin {name}: no module {name.split('.')[0]} {searched}on Python's path")
        text = f"plugin {name} ({spec.origin if spec.has_location else next(iter(spec.submodule_search_locations))})"
        if name not in sys.modules:
            _run(text, lambda: importlib.import_module(name))
    finally:
        sys.dont_write_bytecode = writes_bytecode
        for folder in added:
            sys.path.remove(folder)


def _run(text, do):
    """Import a plugin (`do()`) with its registrations recorded under `text`; refuse an import that
    fails with one line, and warn when it registers nothing."""
    with registry.origin(text) as made:
        try:
            do()
        except HeroBenchError:
            raise  # a registration refused: its message names the plugin already
        except Exception as error:  # noqa: BLE001 - whatever the plugin's own code raises
            raise ConfigError(f"{text} cannot be imported: {_last_line(error)}") from None
    if not made:
        warnings.warn(HeroBenchWarning(f"{text} registers no dataset, model, method or metric"), stacklevel=3)


def _last_line(error):
    """The exception as the last line of its traceback says it: `ModuleNotFoundError: No module named 'x'`."""
    return " ".join(f"{type(error).__name__}: {error}".split())[:300]


def shipped(names):
    """The top-level modules of the plugins `names` that are not installed packages (their file lies
    outside site-packages): what a sweep ships to its trials as Ray's runtime_env `py_modules`. A
    plugin in a package ships the whole package; an installed plugin is the user's to install on
    every node, like any dependency."""
    paths = sysconfig.get_paths()
    installed = [Path(p).resolve() for p in {paths["purelib"], paths["platlib"], *site.getsitepackages(), site.getusersitepackages()}]
    modules = []
    for name in names:
        top = sys.modules[name.split(".")[0]]
        where = Path(top.__file__ or next(iter(top.__path__))).resolve()
        if not any(where.is_relative_to(folder) for folder in installed) and top not in modules:
            modules.append(top)
    return modules
