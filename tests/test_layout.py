"""The package's architecture, checked from its source: imports point one way, the core needs neither
Ray nor W&B, and no file cites a document outside the repository."""
import ast
import re
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hero_bench"
CORE = ("errors", "registry", "atomic", "validation", "yamlfile", "catalog", "rules", "plugins", "data", "models", "memory",
        "hvp", "methods", "config", "hessian", "metrics", "train", "trials", "stats")
# The side that reads trials tables: never torch, so `hero-bench leaderboard` runs wherever pandas does.
TABLE_SIDE = ("catalog", "rules", "plugins", "trials", "stats", "results.leaderboard", "results.comparisons", "results.figures",
              "results.report", "results.outputs")
NO_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("imported torch")
sys.meta_path.insert(0, NoTorch())
"""


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path):
    """Every hero_bench module `path` imports, at any depth of its code (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hero_bench"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if (PACKAGE / Path(*candidate.split(".")[1:])).with_suffix(".py").exists()
                          or (PACKAGE / Path(*candidate.split(".")[1:]) / "__init__.py").exists() else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("hero_bench")}
    return found


def graph():
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_imports_form_no_circle():
    edges = graph()
    # a package's __init__ may re-export its own submodules: that is not a circle between concepts
    edges = {name: {m for m in deps if not m.startswith(name + ".")} for name, deps in edges.items()}
    try:
        list(TopologicalSorter(edges).static_order())
    except CycleError as error:
        pytest.fail(f"import circle: {' -> '.join(error.args[1])}")


def test_readme_lists_every_module_from_the_bottom_layer_up():
    """README's module table names every module once, and a module imports only modules on its row or above."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| module | what it is |"):].split("\n\n", 1)[0].splitlines()[2:]
    row_of = {}
    for index, line in enumerate(table):
        first, described = line.split("|")[1:3]
        for name in re.findall(r"`([\w/]+)`", first):
            if name.endswith("/"):  # a package: its modules are named in the description
                package = name.rstrip("/")
                row_of[package] = index
                row_of.update({f"{package}.{m}": index for m in re.findall(r"`(\w+)`", described)
                               if (PACKAGE / package / f"{m}.py").exists()})
            else:
                row_of[name] = index
    edges = graph()
    listed = {name for name in edges if name != "hero_bench"}
    assert {f"hero_bench.{m}" for m in row_of} == listed, sorted(listed ^ {f"hero_bench.{m}" for m in row_of})
    for name, deps in edges.items():
        for dep in deps - {"hero_bench"}:
            short, below = name.removeprefix("hero_bench."), dep.removeprefix("hero_bench.")
            if short == "hero_bench":
                continue
            assert row_of[below] <= row_of[short], f"{short} (README row {row_of[short]}) imports {below} (row {row_of[below]}), listed below it"


def test_the_core_imports_neither_ray_nor_wandb():
    code = ("import sys; import " + ", ".join(f"hero_bench.{m}" for m in CORE)
            + "; print(sorted(m for m in ('ray', 'wandb') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


def test_a_trial_worker_imports_the_trainable_without_the_sweeps_runner_and_results_side():
    """Ray imports hero_bench.sweep.trainable in every trial worker before its first trial: the
    runner would bring the tables, statistics and figures along (2 s of a worker's start here)."""
    code = ("import sys; import hero_bench.sweep.trainable; print(sorted(m for m in ('hero_bench.sweep.runner', "
            "'hero_bench.results', 'scipy.stats', 'matplotlib', 'optuna', 'wandb') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"
    code = "from hero_bench import sweep; from hero_bench.sweep.runner import run; print(sweep.run is run)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "True"  # the public hero_bench.sweep.run is still there, imported when asked for


def test_the_results_side_and_hero_bench_leaderboard_never_import_torch(tmp_path):
    folder = tmp_path / "quickstart"
    folder.mkdir()
    (folder / "trials.csv").write_bytes((ROOT / "results" / "quickstart" / "trials.csv").read_bytes())
    code = (NO_TORCH + "import " + ", ".join(f"hero_bench.{m}" for m in TABLE_SIDE) + "\n"
            + f"from hero_bench.cli import main\nassert main(['leaderboard', {str(folder)!r}]) == 0\n"
            + "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip().endswith("False"), done.stderr[-2000:]
    assert (folder / "leaderboard.csv").is_file() and list((folder / "figures").glob("*.png"))


def test_what_train_logs_to_wandb_with_imports_no_ray_and_wandb_only_when_a_run_starts():
    code = ("import sys; import hero_bench.cli, hero_bench.tracking"
            "; print(sorted(m for m in ('ray', 'wandb') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"
    edges = graph()
    reachable, todo = set(), ["hero_bench.tracking"]
    while todo:
        for module in edges[todo.pop()] - reachable:
            reachable.add(module)
            todo.append(module)
    assert not [m for m in reachable if m.startswith(("hero_bench.sweep", "hero_bench.results"))]


def test_no_file_cites_a_document_outside_the_repository():
    texts = [*ROOT.glob("*.md"), *ROOT.glob("docs/*.md"), *ROOT.glob("results/*.md"), *PACKAGE.rglob("*.py"),
             *ROOT.glob("tests/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("experiments/**/*.yaml")]
    for path in texts:
        if path == Path(__file__):
            continue
        for line in path.read_text().splitlines():
            assert not re.search(r"DESIGN\.md|STYLE\.md|\.\./shared|shared/seeds", line), f"{path}: {line}"
        for target in re.findall(r"\]\(([^)#]+\.md)", path.read_text()):  # markdown links to .md files
            assert (path.parent / target).resolve().is_file(), f"{path} links to a missing {target}"
