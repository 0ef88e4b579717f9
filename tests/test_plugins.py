"""Plugins: the user's own modules that register datasets, models, methods and metrics, imported from
the experiment's folder, by --plugin, or as an installed package's entry point (docs/extending.md).
A bad plugin's one-line refusals are in tests/test_bad_input.py; a plugin on a two-node cluster in
tests/test_cluster.py; the example plugin in tests/test_extending.py."""
import dataclasses
import json
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import yaml

from hero_bench import cli, config, data, metrics, models, plugins
from hero_bench.errors import ConfigError, HeroBenchWarning
from hero_bench.sweep import resume
from lab_plugins import LAB, lab_parameters, write
from tiny import NO_EVAL, experiment

ROOT = Path(__file__).resolve().parents[1]


def lab_experiment(**sections):
    return experiment(name="lab", plugins=["lab_plugin"], model={"name": "lab_net", "args": {"width": 5}}, **sections)


def test_train_imports_a_plugin_found_next_to_the_experiment_file(plugin_sandbox, tmp_path, monkeypatch):
    write(tmp_path / "lab", "lab_plugin")
    (tmp_path / "lab" / "exp.yaml").write_text(yaml.safe_dump(lab_experiment()))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the plugin is found next to the file, not in the current folder
    assert cli.main(["train", "../lab/exp.yaml", "--quiet", "--out", "run"]) == 0
    result = json.loads((tmp_path / "elsewhere" / "run" / "metrics.json").read_text())
    assert result["status"] == "completed"
    assert result["lab_parameters"] == lab_parameters((1, 4, 4), 3, width=5)  # the plugin's model, measured by its metric
    assert str(tmp_path / "lab") not in sys.path, "the experiment's folder is on the path only while its plugins import"


def test_the_plugin_flag_finds_a_module_in_the_current_folder_and_joins_the_experiment(plugin_sandbox, tmp_path, monkeypatch):
    write(tmp_path, "lab_plugin")
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(experiment(name="lab", model={"name": "lab_net", "args": {}})))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "exp.yaml", "--quiet", "--out", "run", "--plugin", "lab_plugin", "--plugin", "lab_plugin"]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["lab_parameters"] == lab_parameters((1, 4, 4), 3)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["plugins"] == ["lab_plugin"]


def test_list_shows_each_plugin_name_with_its_origin(plugin_sandbox, tmp_path, monkeypatch, capsys):
    path = write(tmp_path, "lab_plugin").resolve()
    monkeypatch.chdir(tmp_path)
    assert cli.main(["list", "--plugin", "lab_plugin"]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["models"].split(", ")[:2] == ["lab_net [plugin lab_plugin (" + str(path) + ")]", "lenet5"]
    assert f"lab_size [plugin lab_plugin ({path})]" in lines["metrics"]
    assert lines["methods"] == "gradnorm, hero, sam, sgd"  # built-in names carry no mark


def test_a_plugin_that_registers_nothing_is_a_warning_naming_it(plugin_sandbox, tmp_path, monkeypatch):
    path = write(tmp_path, "empty_plugin", "VALUE = 1\n").resolve()
    monkeypatch.chdir(tmp_path)
    with pytest.warns(HeroBenchWarning) as record:
        assert cli.main(["list", "models", "--plugin", "empty_plugin"]) == 0
    assert [str(w.message) for w in record] == [f"plugin empty_plugin ({path}) registers no dataset, model, method or metric"]


def test_a_plugin_is_imported_once_and_its_folder_only_while_it_imports(plugin_sandbox, tmp_path):
    imports = tmp_path / "imports.txt"
    os.environ["LAB_PLUGIN_IMPORTS"] = str(imports)
    try:
        write(tmp_path, "lab_plugin")
        plugins.load(["lab_plugin"], [tmp_path])
        plugins.load(["lab_plugin"], [tmp_path])
        config.from_dict(lab_experiment(), folders=[tmp_path])
    finally:
        del os.environ["LAB_PLUGIN_IMPORTS"]
    assert len(imports.read_text().splitlines()) == 1
    assert str(tmp_path) not in sys.path


def test_a_plugin_in_a_package_ships_its_package_and_an_installed_module_ships_not(plugin_sandbox, tmp_path):
    write(tmp_path / "labpkg", "__init__", "")
    write(tmp_path / "labpkg", "extras", "from hero_bench.models import MODELS, mlp\n\nMODELS.register('pkg_mlp')(mlp)\n")
    write(tmp_path, "lab_plugin")
    plugins.load(["labpkg.extras", "lab_plugin", "yaml"], [tmp_path])
    shipped = plugins.shipped(["labpkg.extras", "lab_plugin", "yaml"])
    assert [Path(m.__file__) for m in shipped] == [tmp_path / "labpkg" / "__init__.py", tmp_path / "lab_plugin.py"]


def test_an_evaluator_reporting_undeclared_keys_warns_once_naming_them(plugin_sandbox, tmp_path):
    path = write(tmp_path, "secret_plugin", "from hero_bench.metrics import METRICS\n\n\n"
                 "@METRICS.register('secret')\ndef secret(model, data, evaluate, seed):\n    return {'lab_secret': 42.0}\n")
    plugins.load(["secret_plugin"], [tmp_path])
    dataset = data.load("synthetic", num_samples=60, num_test=30, input_shape=(1, 4, 4), num_classes=3)
    model = models.create("mlp", dataset.input_shape, dataset.num_classes, hidden=[4])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [metrics.evaluate(model, dataset, NO_EVAL, seed=0) for _ in range(2)]
    assert [r["lab_secret"] for r in results] == [42.0, 42.0]  # kept in the trial's result
    assert [str(w.message) for w in caught if w.category is HeroBenchWarning] == [
        f"metric 'secret' (plugin secret_plugin ({path.resolve()})) reports lab_secret, which the metric catalog does not "
        "declare: trials.csv keeps them, the leaderboard and comparisons leave them out (declare them with "
        "hero_bench.catalog.declare, docs/extending.md)"]


def test_resume_counts_the_plugins_as_part_of_the_experiment():
    base = config.from_dict(experiment(name="lab"))
    before_plugins = {k: v for k, v in base.to_dict().items() if k != "plugins"}  # a sweep.json older than plugins
    resume.check_unchanged(before_plugins, base)
    with pytest.raises(ConfigError, match=r"in 1 key\(s\): plugins \[\] -> \['lab_plugin'\]"):
        resume.check_unchanged(base.to_dict(), dataclasses.replace(base, plugins=["lab_plugin"]))


def wheel(folder, source):
    """A throwaway package, hero-lab 0.1, as a wheel: the module hero_lab (`source`) and an entry point
    `lab = hero_lab` in the group hero_bench.plugins. Written by hand, so pip installs it with no
    build backend and no network."""
    files = {"hero_lab/__init__.py": source,
             "hero_lab-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: hero-lab\nVersion: 0.1\n",
             "hero_lab-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: hero-bench tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
             "hero_lab-0.1.dist-info/entry_points.txt": f"[{plugins.GROUP}]\nlab = hero_lab\n"}
    files["hero_lab-0.1.dist-info/RECORD"] = "".join(f"{name},,\n" for name in [*files, "hero_lab-0.1.dist-info/RECORD"])
    path = Path(folder) / "hero_lab-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


@pytest.mark.slow
def test_an_installed_plugin_registers_through_its_entry_point(tmp_path):
    """The package, installed by pip into a folder of its own that the command's Python path holds:
    every command imports it without being told, and its names come with its origin."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel(tmp_path, LAB))], check=True, capture_output=True, timeout=300)
    write(tmp_path / "work", "empty_plugin", "VALUE = 1\n")
    (tmp_path / "work" / "exp.yaml").write_text(yaml.safe_dump(experiment(name="lab", model={"name": "lab_net", "args": {}})))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", str(ROOT))])}
    code = ("import sys; from hero_bench.cli import main\n"
            "sys.exit(main(['list', 'models', '--plugin', 'empty_plugin']) or main(['train', 'exp.yaml', '--quiet', '--out', 'run']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "work", env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "lab_net [entry point lab (hero-lab 0.1)]" in done.stdout
    warning = f"hero-bench: warning: plugin empty_plugin ({tmp_path / 'work' / 'empty_plugin.py'}) registers no dataset"
    assert [line for line in done.stderr.splitlines() if line.startswith("hero-bench:")] == [
        warning + ", model, method or metric"]
    result = json.loads((tmp_path / "work" / "run" / "metrics.json").read_text())
    assert result["lab_parameters"] == lab_parameters((1, 4, 4), 3)


def test_a_trial_whose_node_cannot_import_a_plugin_fails_with_one_line(plugin_sandbox, tmp_path):
    """A trial builds its Config by config.for_trial, which imports the experiment's plugins by name:
    on a node where the plugin is neither shipped nor installed that fails with one line, which Ray
    records as the trial's error (a failed trial; the sweep goes on, tests/test_reliability.py)."""
    write(tmp_path, "lab_plugin")
    base = config.from_dict(lab_experiment(), folders=[tmp_path])
    del sys.modules["lab_plugin"]  # now as in a fresh worker that has no copy of it
    plugins._loaded.discard("lab_plugin")
    with pytest.raises(ConfigError, match=r"^plugin lab_plugin: no module lab_plugin on Python's path$"):
        config.for_trial(base, {"train.lr": 0.1})


def test_a_ray_started_before_the_sweep_keeps_its_runtime_environment_with_a_warning(plugin_sandbox, tmp_path, monkeypatch):
    import ray

    from hero_bench.sweep import cluster

    write(tmp_path, "lab_plugin")
    plugins.load(["lab_plugin"], [tmp_path])
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "init", lambda **kwargs: pytest.fail("a Ray that runs is not started again"))
    with pytest.warns(UserWarning, match=r"^Ray was started before this sweep, so the plugin module\(s\) lab_plugin are not shipped"):
        with cluster.ray_running(None, plugins.shipped(["lab_plugin"])):
            pass
