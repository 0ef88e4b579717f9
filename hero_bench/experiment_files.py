"""The experiment files that ship with hero-bench, and how a command names one.

The repository keeps them in experiments/. A wheel or sdist carries the same files inside the
package, as hero_bench/experiments/ (pyproject.toml maps the folder there), so `hero-bench sweep
quickstart` works wherever hero-bench is installed. A command's FILE is a path, as before, or the
bare name of a shipped experiment (`hero-bench list experiments`).
"""
import fnmatch
from pathlib import Path

from hero_bench.errors import ConfigError

SUFFIXES = (".yaml", ".yml")


def folder():
    """The shipped experiment files: hero_bench/experiments/ of an installed wheel, else experiments/
    of the checkout this package lives in (an editable install, or the checkout on PYTHONPATH)."""
    package = Path(__file__).resolve().parent
    installed = package / "experiments"
    return installed if installed.is_dir() else package.parent / "experiments"


def names(pattern="*"):
    """The shipped experiments' names (their files' stems) matching a shell-style wildcard, sorted."""
    return sorted(fnmatch.filter((path.stem for path in folder().glob("*.yaml")), pattern))


def resolve(text):
    """The experiment file a command's FILE names: an existing file, or anything that reads as a path
    (a folder in it, a .yaml or .yml suffix), as given; else the shipped experiment of that name; else
    an existing folder of that name, as given (config.read_yaml says what is wrong with a path)."""
    path = Path(text)
    if path.is_file() or len(path.parts) != 1 or path.suffix in SUFFIXES:
        return path
    shipped = folder() / f"{text}.yaml"
    if shipped.is_file():
        return shipped
    if path.exists():
        return path
    raise ConfigError(f"experiment {text!r} is neither a file nor the name of a shipped experiment "
                      f"({', '.join(names())}; `hero-bench list experiments`)")
