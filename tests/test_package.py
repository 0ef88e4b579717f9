"""hero-bench as a user installs it. `python -m build` on a fresh clone makes an sdist and, from it, a
wheel; both carry the package, every experiment file and the license. The wheel, installed into a
fresh virtual environment, runs the shipped quickstart by name from an empty folder outside the
repository. The floors in pyproject.toml are the versions .ci/floors.txt pins (docs/install.md: how
they were tested), and README's install line is the one CI runs."""
import os
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from clone import ROOT, fresh_clone

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# what a user's shell has: no PYTHONPATH that would put a checkout's hero_bench before the wheel's
ENV = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def run(argv, **kwargs):
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=ENV, timeout=600, **kwargs)
    assert done.returncode == 0, f"{argv}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(sdist, wheel, the python of a fresh virtual environment with the wheel installed). The venv
    sees this interpreter's packages (--system-site-packages: torch, Ray, ... are not installed again),
    and the wheel goes in without dependencies; its own hero_bench comes first on its path."""
    work = tmp_path_factory.mktemp("package")
    source = fresh_clone(work / "source")
    run([sys.executable, "-m", "venv", "--system-site-packages", work / "venv"])
    python = work / "venv" / "bin" / "python"
    run([python, "-m", "pip", "install", "--quiet", "build"])
    run([python, "-m", "build", "--outdir", work / "dist", source])  # the sdist, then the wheel from it
    sdist, wheel = sorted((work / "dist").glob("hero_bench-*.tar.gz")), sorted((work / "dist").glob("hero_bench-*.whl"))
    assert len(sdist) == len(wheel) == 1
    run([python, "-m", "pip", "install", "--quiet", "--no-deps", wheel[0]])
    return sdist[0], wheel[0], python


def shipped_files():
    """The package's modules and the experiment files, relative to the repository root."""
    return {str(p.relative_to(ROOT)) for pattern in ("hero_bench/**/*.py", "experiments/**/*.yaml") for p in ROOT.glob(pattern)}


@pytest.mark.slow
def test_the_sdist_and_the_wheel_carry_the_package_the_experiments_and_the_license(built):
    sdist, wheel, _ = built
    version = PYPROJECT["project"]["version"]
    with tarfile.open(sdist) as archive:
        in_sdist = {name.partition("/")[2] for name in archive.getnames()}
    assert shipped_files() | {"LICENSE", "README.md", "pyproject.toml"} <= in_sdist, sorted(shipped_files() - in_sdist)
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
    # in the wheel the experiments live inside the package: hero_bench/experiments/
    expected = {name.replace("experiments/", "hero_bench/experiments/", 1) if name.startswith("experiments/") else name
                for name in shipped_files()}
    assert expected <= in_wheel, sorted(expected - in_wheel)
    assert f"hero_bench-{version}.dist-info/licenses/LICENSE" in in_wheel
    metadata = zipfile.ZipFile(wheel).read(f"hero_bench-{version}.dist-info/METADATA").decode()
    assert "License-Expression: MIT" in metadata and "Requires-Dist: ray[tune]<2.61,>=2.58" in metadata
    assert "torch>=2.14.1" in metadata and "<=2.14.1" not in metadata  # the torch cap is constraints.txt's


@pytest.mark.slow
def test_the_installed_wheel_runs_the_quickstart_by_name_in_an_empty_folder(built, tmp_path):
    _, _, python = built
    venv = python.parent.parent
    where = run([python, "-c", "import hero_bench, sys; print(hero_bench.__file__)"], cwd=tmp_path).strip()
    assert Path(where).is_relative_to(venv), f"the venv imports {where}, not the wheel's hero_bench"
    hero_bench = venv / "bin" / "hero-bench"
    listed = run([hero_bench, "list", "experiments"], cwd=tmp_path)
    assert "quickstart" in listed and str(venv) in listed  # the experiments inside the installed package
    out = run([hero_bench, "sweep", "quickstart", "--set", "train.epochs=1", "--set", "sweep.seeds=[0]"], cwd=tmp_path)
    table = pd.read_csv(tmp_path / "results" / "quickstart" / "trials.csv")
    assert len(table) == 48 and set(table["status"]) == {"completed"} and set(table["train.epochs"]) == {1}, out[-2000:]
    assert (tmp_path / "results" / "quickstart" / "figures" / "heatmap_digits_mlp.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ray_results", "results"]


def floor(requirement):
    """The version a requirement's `>=` names."""
    return next(Version(spec.version) for spec in requirement.specifier if spec.operator == ">=")


def test_every_declared_floor_is_the_version_floors_txt_pins():
    """.ci/floors.txt installs every floor at once; a floor raised or added in pyproject.toml and not
    there would go untested."""
    declared = [Requirement(text) for text in [*PYPROJECT["project"]["dependencies"],
                                               *PYPROJECT["project"]["optional-dependencies"]["test"]]]
    pinned = {}
    for line in (ROOT / ".ci" / "floors.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            pinned[requirement.name] = next(Version(spec.version) for spec in requirement.specifier)
    assert {r.name: floor(r) for r in declared} == pinned


def test_readme_installs_as_ci_does_with_the_constraints_file():
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    ci = next(line for line in lines if line.startswith("pip install"))
    assert ci == 'pip install -c constraints.txt -e ".[test]" && pytest'
    assert f"\n{ci}\n" in (ROOT / "README.md").read_text()
    assert "pip install -c constraints.txt -e . && hero-bench sweep quickstart\n" in (ROOT / "README.md").read_text()
    caps = [Requirement(line) for line in (ROOT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert {r.name for r in caps} == {"torch", "torchvision"}
