"""The experiment files under experiments/: each loads and its sweep validates; every claim experiment
follows the comparison protocol (equal budgets with the learning rate, a real SGD family, compute-
matched SGD, enough seeds); the CIFAR ones hold the authors' setting, document commands that work, and
every model of their grid trains one step on synthetic data of CIFAR's shape (the real sweeps are for
a GPU cluster, not CI)."""
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from commands import header_commands
from hero_bench import cli, experiment_files
from hero_bench.sweep import search
from hero_bench.sweep import space as sweep_space
from hero_bench import config as config_module
from hero_bench.train import run_trial
from hero_bench import trials
from hero_bench.trials import GPU_IDS

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))
CIFAR = [path for path in EXPERIMENTS if path.name.startswith("cifar")]
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
ids = [path.stem for path in EXPERIMENTS]
cifar_ids = [path.stem for path in CIFAR]




def one_step_trial(config, model):
    """The file's base trial for `model` (its other keys as in the file: hero at radius 0.5, hessian_coef 5),
    shrunk to a single step on 4 synthetic images of CIFAR's shape and class count, batch 4, one
    epoch, evaluation off: what is tested is that model, method and data shape fit together."""
    classes = NUM_CLASSES[config.data.name]
    samples = max(16, classes)  # synthetic needs as many images as classes in every split
    params = {
        "model.name": model,
        "data.name": "synthetic",
        "data.args": {"input_shape": [3, 32, 32], "num_classes": classes, "num_samples": samples, "num_test": classes},
        "data.val_fraction": (samples - 4) / samples,  # the rest validates: one forward pass, not a HERO step
        "train.epochs": 1,
        "train.batch_size": 4,
        "train.threads": 1,
        "train.device": "cpu",
        "evaluate": {"ptq_bits": [], "hessian": {"top_eigenvalue": False, "trace": False}, "weight_noise": {"sigmas": []}},
    }
    return config_module.for_trial(config, sweep_space.trial_params(params))


CLAIMS = [path for path in EXPERIMENTS if re.fullmatch(r"(cifar10|cifar100|digits|mnist1d)_(generalization|label_noise)",
                                                         path.stem)]
claim_ids = [path.stem for path in CLAIMS]


def test_the_claim_experiments_of_the_protocol_exist():
    expected = {f"{data}_{claim}" for data in ("cifar10", "cifar100", "digits", "mnist1d")
                for claim in ("generalization", "label_noise")}
    assert {path.stem for path in CLAIMS} == expected


@pytest.mark.parametrize("path", EXPERIMENTS, ids=ids)
def test_experiment_file_loads_and_its_sweep_space_validates(path):
    config = config_module.load(path)
    space = search.prepare(config).space  # validates every grid value against the schema, draws what it draws
    assert space["train.seed"] == {"grid_search": config.sweep.seeds}


@pytest.mark.parametrize("path", CLAIMS, ids=claim_ids)
def test_every_claim_experiment_gives_every_family_the_same_budget_with_the_learning_rate(path):
    config = config_module.load(path)
    budgets = search.tuning_budgets(config)
    for _, group in budgets.groupby(["data.name", "model.name", "data.label_noise", "data.label_noise_kind"]):
        assert group["configurations"].nunique() == 1, group[["family", "configurations"]]
        assert all("train.lr" in swept for swept in group["swept"]), group[["family", "swept"]]
        # a real SGD family and SGD given the compute of HERO (3 gradients a step)
        assert {"sgd", "sgd_3x", "sam", "hero"} <= set(group["family"])
        assert (group.loc[group["family"] == "sgd", "swept"].iloc[0] == ["train.lr", "train.weight_decay"])
    families = sweep_space.TrialConfigs(config)
    sgd = [families.get(p) for p in sweep_space.grid_params(sweep_space.search_space(config))]
    assert any(c.optimizer.name == "sgd" for c in sgd)  # SGD by name, not HERO at radius 0
    assert len(config.sweep.seeds) >= 5


@pytest.mark.parametrize("path", CLAIMS, ids=claim_ids)
def test_every_swept_key_of_a_claim_grid_has_three_values_or_more(path):
    """Two values cannot bracket an optimum: with three, a choice inside the grid is bracketed."""
    config = config_module.load(path)
    configs = sweep_space.TrialConfigs(config)
    points = sweep_space.points(sweep_space.search_space(config), 1)
    rows = pd.DataFrame([trials.row("", configs.get(p), sweep_space.trial_params(p)) for p in points])
    rows["family"] = trials.family(rows)
    budgets = search.tuning_budgets(config)
    for keys, members in rows.groupby(trials.GROUP_KEYS + ["family"], dropna=False):
        swept = budgets[(budgets[trials.GROUP_KEYS + ["family"]].astype(str) == [str(k) for k in keys]).all(axis=1)]["swept"]
        for key in swept.iloc[0]:
            family = keys[-1]
            assert members[key].nunique() >= 3, (path.stem, family, key, sorted(members[key].unique()))


MNIST1D_CLAIMS = [path for path in CLAIMS if path.stem.startswith("mnist1d")]


@pytest.mark.parametrize("path", MNIST1D_CLAIMS, ids=[path.stem for path in MNIST1D_CLAIMS])
def test_a_mnist1d_claim_file_is_confirmatory(path):
    """Hypotheses declared in the file, fresh confirmation seeds (at least 10), grids that bracket."""
    config = config_module.load(path)
    assert config.hypotheses and {h.method for h in config.hypotheses} == {"hero"}
    assert {h.baseline for h in config.hypotheses} >= {"sgd", "sam", "sgd_3x"}
    assert len(config.sweep.confirm_seeds) >= 10 and not set(config.sweep.confirm_seeds) & set(config.sweep.seeds)
    assert config.sweep.bracket >= 1


@pytest.mark.parametrize("path", CLAIMS, ids=claim_ids)
def test_claim_file_states_its_true_trial_count(path):
    config = config_module.load(path)
    stated = re.search(r"= (\d+) trials", path.read_text())
    assert stated, "the header should say how many trials the sweep runs"
    assert int(stated.group(1)) == len(sweep_space.grid_params(sweep_space.search_space(config)))


@pytest.mark.parametrize("path", CIFAR, ids=cifar_ids)
def test_cifar_file_holds_the_authors_setting_and_point_on_its_grids(path):
    config = config_module.load(path)
    dataset, _, claim = path.stem.partition("_")
    assert config.name == path.stem and config.data.name == dataset and config.data.download is False
    t, o = config.train, config.optimizer
    assert (t.epochs, t.batch_size, t.lr, t.schedule, t.momentum, t.weight_decay) == (200, 128, 0.1, "cosine", 0.9, 5e-4)
    assert (o.name, o.radius, o.hessian_coef, o.adaptive) == ("hero", 0.5, 5.0, True)
    grids = {}
    for grid in config.sweep.space:  # each family's first grid
        grids.setdefault(grid["optimizer.name"][0], grid)
    assert 0.1 in grids["sgd"]["train.lr"] and 5e-4 in grids["sgd"]["train.weight_decay"]
    assert grids["hero"]["optimizer.radius"] == [0.5] and 5.0 in grids["hero"]["optimizer.hessian_coef"]
    assert 0.5 in grids["sam"]["optimizer.radius"]
    assert config.sweep.scheduler == "fifo"
    assert (config.sweep.resources_per_trial.cpu, config.sweep.resources_per_trial.gpu) == (4, 0.5)
    if claim == "generalization":
        assert config.evaluate.ptq_bits == [8, 6, 5, 4, 3, 2] and config.evaluate.ptq_per_channel is True
        assert grids["sgd"]["model.name"] == ["resnet20", "mobilenet_v2"]
    else:
        assert grids["sgd"]["data.label_noise"] == [0.2, 0.4, 0.6, 0.8] and config.data.label_noise_kind == "flip"


@pytest.mark.parametrize("path", CIFAR, ids=cifar_ids)
def test_commands_in_cifar_file_comments_parse_and_give_valid_sweeps(path):
    commands = header_commands(path)
    assert commands
    for argv in commands:
        args = cli.parser().parse_args(argv[1:])
        assert experiment_files.resolve(args.file) == path
        sweep_space.search_space(config_module.load(path, args.set))


@pytest.mark.parametrize("dataset", NUM_CLASSES)
def test_the_label_noise_file_trains_the_generalization_setting(dataset):
    """So the claims are measured on the same recipe: only label noise, grids and evaluation differ."""
    def setting(claim):
        raw = config_module.load(ROOT / "experiments" / f"{dataset}_{claim}.yaml").to_dict()
        return raw["train"], raw["optimizer"], raw["model"]

    assert setting("label_noise") == setting("generalization")


@pytest.mark.parametrize("dataset", NUM_CLASSES)
def test_each_model_of_a_cifar_grid_trains_one_step_at_the_authors_point(dataset):
    config = config_module.load(ROOT / "experiments" / f"{dataset}_generalization.yaml")
    for model in config.sweep.space[0]["model.name"]:
        trial = one_step_trial(config, model)
        assert (trial.optimizer.name, trial.optimizer.radius, trial.optimizer.hessian_coef) == ("hero", 0.5, 5.0)
        result = run_trial(trial)
        assert result["status"] == "completed" and result["epochs_done"] == 1, result.get("error")
        assert math.isfinite(result["train_loss"]) and result["grad_evals"] >= 2  # a HERO step: g(W), g(W + z), ...


def test_cluster_file_is_a_valid_ray_cluster_config_that_installs_this_repo():
    from ray.autoscaler._private.util import prepare_config, validate_config  # what `ray up` runs first

    raw = yaml.safe_load((ROOT / "experiments" / "cluster" / "cluster.yaml").read_text())
    validate_config(prepare_config(raw))
    assert raw["file_mounts"]["~/hero-bench"] == "."
    assert any(cmd.startswith("pip install") and "~/hero-bench" in cmd for cmd in raw["setup_commands"])
    assert raw["available_node_types"]["gpu_worker"]["min_workers"] >= 1  # sweeps refuse to start without a GPU


@pytest.mark.slow
def test_gpu_check_without_cuda_exits_non_zero_with_a_clear_message():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU visible, also on a machine that has one
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert "no CUDA device" in done.stderr and "Traceback" not in done.stderr


def markdown_tables(text):
    """The table of each '## title' section of a markdown text, as lists of {column: cell} rows."""
    tables = {}
    for section in text.split("\n## ")[1:]:
        lines = [line for line in section.splitlines() if line.startswith("|")]
        cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
        tables[section.splitlines()[0]] = [dict(zip(cells[0], row)) for row in cells[2:]] if cells else []
    return tables


# What a bare GPU machine lacks: the GPU check's core must run without it. A refused package fails
# to import as a missing one does; torch's own probes (importlib.util.find_spec) see no file of it.
ABSENT_ON_THE_GPU_MACHINE = ("ray", "wandb", "optuna", "mnist1d", "sklearn")
REFUSE_IMPORTS = f"""
import importlib.abc, importlib.machinery, sys

class Refuse(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {ABSENT_ON_THE_GPU_MACHINE!r}:
            return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {{spec.name!r}}", name=spec.name)

    def exec_module(self, module):
        pass

sys.meta_path.insert(0, Refuse())
"""


def gpu_check(tmp_path, *args, env=None):
    """benchmarks/gpu_check.py --dry-run in a subprocess; the tables of its gpu_check.md."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path), *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    text = (tmp_path / "gpu_check.md").read_text()
    assert text.startswith("# gpu_check: DRY RUN") and "error:" not in text, text
    return markdown_tables(text)


def trials_per_minute_fits(trials, seconds, per_minute):
    """trials/min against the seconds it was computed from, within the rounding of both (1 decimal)."""
    return 60 * trials / (seconds + 0.05) - 0.05 <= per_minute <= 60 * trials / (seconds - 0.05) + 0.05


@pytest.mark.slow
def test_gpu_check_dry_run_measures_its_core_without_ray_wandb_optuna_mnist1d_or_scikit_learn(tmp_path):
    """The one-shot GPU check runs on a machine with none of the packages a bare GPU machine lacks
    (they cannot be imported, in its worker processes either): every row of its core tables is
    measured (the operation counts are the methods' own accounting, docs/methods.md), the packing
    processes ran every trial, and the Ray sweep is skipped with one line."""
    (tmp_path / "refuse").mkdir()
    (tmp_path / "refuse" / "sitecustomize.py").write_text(REFUSE_IMPORTS)  # every Python started below runs it
    path = os.pathsep.join([str(tmp_path / "refuse"), *sys.path])
    probe = subprocess.run([sys.executable, "-c", "import ray"], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path})
    assert "No module named 'ray'" in probe.stderr  # the refusal works
    tables = gpu_check(tmp_path, env={**os.environ, "PYTHONPATH": path})
    assert set(tables) == {"Epoch time", "fd vs exact Hessian-vector product", "Packing", "Sweep throughput"}

    steps = math.ceil((48 - 1) / 16)  # 48 images less one held out for validation, batch 16, one epoch
    epochs = tables["Epoch time"]
    assert [(r["method"], r["precision"]) for r in epochs] == [
        (m, p) for p in ("fp32", "bf16") for m in ("sgd", "sam", "hero fd", "hero auto", "hero exact")]
    for r in epochs:
        assert float(r["epoch s"]) > 0 and r["status"].startswith("completed")
        # grads and Hessian-vector products per step: sgd 1, sam 2, hero fd 3, hero exact 2 + 1;
        # hero auto checks on its first step (exact and fd: 3 + 1), then fd, or exact if it switched
        switched = r["status"].endswith("fd -> exact at step 0")
        expected = {"sgd": (steps, 0), "sam": (2 * steps, 0), "hero fd": (3 * steps, 0), "hero exact": (2 * steps, steps),
                    "hero auto": (3 + (2 if switched else 3) * (steps - 1), steps if switched else 1)}[r["method"]]
        assert (int(r["grads"]), int(r["hvps"])) == expected, r
    cosine = {r["precision"]: r for r in tables["fd vs exact Hessian-vector product"]}
    assert int(cosine["fp32"]["checks"]) == 2 and cosine["fp32"]["auto switched to exact"] == "never"
    assert float(cosine["fp32"]["min cosine"]) > 0.999  # docs/methods.md: 1 - cosine about 2e-5 in float32
    assert 0 < float(cosine["bf16"]["min cosine"]) <= 1

    packing = tables["Packing"]
    assert [r["processes"] for r in packing] == ["1", "2", "4"]
    for r in packing:
        assert r["trials"] == r["completed"] == "4" and float(r["trial epoch s"]) > 0 and float(r["peak MB of a trial"].replace(",", "")) > 0
        assert trials_per_minute_fits(4, float(r["wall s"]), float(r["trials/min"]))
        assert r["device MB in use at most"] == "n/a (on the CPU)"
    assert tables["Sweep throughput"] == []
    assert "skipped: Ray cannot be imported here" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.slow
def test_gpu_check_dry_run_sweeps_through_ray_where_ray_imports(tmp_path):
    """Where Ray is installed, the check also runs `hero-bench sweep` at 1, 2 and 4 trials per GPU,
    on the GPU a local Ray declares."""
    sweeps = gpu_check(tmp_path, "--parts", "sweep", "--trials", "2")["Sweep throughput"]
    placed = "cuda:0 [0]" if torch.cuda.is_available() else "cpu [0]"  # Ray's declared GPU; no CUDA: the CPU
    assert [r["trials per GPU"] for r in sweeps] == ["1", "2", "4"]
    for r in sweeps:
        assert r["trials"] == r["completed"] == "2" and r["device gpu_ids"] == placed
        assert trials_per_minute_fits(2, float(r["sweep s"]), float(r["trials/min"]))
        trials = pd.read_csv(tmp_path / "sweeps" / f"packing-{r['trials per GPU']}" / "trials.csv")
        assert set(trials[GPU_IDS]) == {"[0]"} and len(trials) == 2
