"""Every user mistake ends with one clear line naming the field and what is allowed, a failure (exit
code 2 from `hero-bench`, a ConfigError or DatasetNotFoundError from the Python API) and no files
written. One table of mistakes across CLI flags, YAML fields and the Python API;
each runs with the working directory an empty folder that holds only the experiment file."""
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
import yaml

from hero_bench import cli, config, data, methods, metrics, models
from hero_bench import sweep  # noqa: F401 - imported here, so timings below measure checks, not imports
from hero_bench.errors import ConfigError, DatasetNotFoundError
from tiny import experiment

# W&B offline, as by default: a refused experiment must not leave even an offline run behind
EXPERIMENT = experiment(name="bad", train={"epochs": 1}, tracking={"wandb": "offline"})


@dataclass(frozen=True)
class Mistake:
    id: str
    expect: tuple  # parts of the one-line message
    argv: tuple = ()  # `hero-bench` arguments; the experiment file is exp.yaml
    experiment: object = None  # sections that replace EXPERIMENT's (one level deep), or the file's raw text
    call: Callable | None = None  # a Python API call that raises `error`
    error: type = ConfigError
    process: bool = False  # a real `hero-bench` process rather than cli.main in this one
    within_s: float | None = None


def train(id, expect, *flags, experiment=None, process=False):
    return Mistake(id, (expect,) if isinstance(expect, str) else expect, ("train", "exp.yaml", "--quiet", *flags),
                   experiment, process=process)


def sweep_cli(id, expect, *flags, experiment=None, process=False, within_s=None):
    return Mistake(id, (expect,) if isinstance(expect, str) else expect, ("sweep", "exp.yaml", *flags),
                   experiment, process=process, within_s=within_s)


def api(id, expect, call, error=ConfigError):
    return Mistake(id, (expect,) if isinstance(expect, str) else expect, call=call, error=error)


def mlp():
    return models.create("mlp", (1, 4, 4), 3, hidden=[8])


def space(**axes):
    return {"sweep": {"space": {key.replace("__", "."): value for key, value in axes.items()}}}


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")

MISTAKES = [
    # names that are not registered
    train("unknown-dataset", ("data.name: unknown dataset 'imagenet'; known: ", "digits"), "--set", "data.name=imagenet"),
    train("unknown-model", ("model.name: unknown model 'resnet19'; known: ", "resnet20"), experiment={"model": {"name": "resnet19"}}),
    train("unknown-method", "optimizer.name: unknown method 'adam'; known: gradnorm, hero, sam, sgd", "--set", "optimizer.name=adam"),
    train("unknown-dataset-option", ("data.args.colour is not an option of dataset 'synthetic'; allowed: ", "num_samples"),
          experiment={"data": {"name": "synthetic", "args": {"colour": True}}}),
    train("missing-torchvision-dataset", ("cifar10 files not found or corrupted under missing/cifar-10-batches-py", "set data.download: true"),
          experiment={"data": {"name": "cifar10", "root": "missing", "args": {}}}),
    # values out of range or of the wrong type
    train("label-noise-one", "data.label_noise must be in [0, 1), got 1.0", experiment={"data": {"label_noise": 1.0}}),
    train("label-noise-flag", "data.label_noise must be in [0, 1), got 1.5", "--set", "data.label_noise=1.5"),
    train("val-fraction-zero", "data.val_fraction must be in (0, 1), got 0.0", experiment={"data": {"val_fraction": 0}}),
    train("epochs-zero", "train.epochs must be in [1, inf), got 0", "--set", "train.epochs=0"),
    train("epochs-not-a-number", "train.epochs must be int, got 'two'", experiment={"train": {"epochs": "two"}}),
    train("unknown-schedule", "train.schedule must be one of cosine, step, constant, got 'linear'", experiment={"train": {"schedule": "linear"}}),
    train("unknown-hvp-mode", "optimizer.hvp must be one of auto, fd, exact, got 'approx'", experiment={"optimizer": {"hvp": "approx"}}),
    train("hessian-every-zero", "optimizer.hessian_every must be in [1, inf), got 0", "--set", "optimizer.hessian_every=0"),
    train("ptq-1-bit", "evaluate.ptq_bits must be in [2, 16], got 1", experiment={"evaluate": {"ptq_bits": [8, 1]}}),
    train("ptq-17-bits", "evaluate.ptq_bits must be in [2, 16], got 17", "--set", "evaluate.ptq_bits=[17]"),
    train("negative-sigma", "evaluate.weight_noise.sigmas must be in [0, inf), got -0.1", "--set", "evaluate.weight_noise.sigmas=[-0.1]"),
    train("zero-probes", "evaluate.hessian.probes must be in [1, inf), got 0", "--set", "evaluate.hessian.probes=0"),
    train("zero-samples", "evaluate.hessian.samples must be in [1, inf), got 0", experiment={"evaluate": {"hessian": {"samples": 0}}}),
    # keys and files
    train("unknown-flag-key", ("unknown key 'train.nope'", "allowed: epochs, batch_size"), "--set", "train.nope=1"),
    train("unknown-yaml-key", "unknown key 'train.epoch'; allowed in this section: epochs", experiment={"train": {"epoch": 2}}),
    train("flag-without-value", "--set expects key=value (e.g. optimizer.radius=0.5), got 'radius'", "--set", "radius"),
    train("flag-into-a-value", "unknown key 'train.epochs.x': 'train.epochs' is a value, not a section", "--set", "train.epochs.x=1"),
    train("yaml-not-a-mapping", "an experiment file must be a YAML mapping of sections", experiment="- a\n- b\n"),
    Mistake("missing-experiment-file", ("experiment file 'nope.yaml' does not exist",), ("train", "nope.yaml")),
    train("malformed-yaml", ("malformed YAML in exp.yaml at line 3, column 1", "expected ',' or ']'"),
          experiment="name: x\ndata: {name: [digits\n", process=True),
    # safety: YAML and --set values are data, never code, and a name never leaves results/
    train("yaml-tag-that-runs-code", ("malformed YAML in exp.yaml at line 1", "could not determine a constructor for the tag"),
          experiment='name: !!python/object/apply:os.system ["touch code-ran"]\n'),
    train("flag-tag-that-runs-code", "--set name: cannot parse value", "--set", 'name=!!python/object/apply:os.system ["touch code-ran"]'),
    train("flag-value-is-not-evaluated", ("name must be letters, digits", "got \"__import__('os').getcwd()\""),
          "--set", "name=__import__('os').getcwd()"),
    sweep_cli("name-climbs-out-of-results", ("name must be letters, digits, '_', '-' or '.' (no '/' or '..'", "got '../escape'"),
              experiment={"name": "../escape"}, process=True),
    sweep_cli("name-is-an-absolute-path", ("name must be letters, digits", "got '/tmp/abs'"), "--set", "name=/tmp/abs"),
    # the sweep section and the sweep command
    sweep_cli("unknown-swept-key", ("sweep.space.optimizer.radiuss: unknown key 'optimizer.radiuss'", "allowed: name, radius"),
              experiment=space(optimizer__radiuss=[0.1])),
    sweep_cli("empty-grid-axis", "sweep.space.optimizer.radius is an empty list: a grid axis needs at least one value",
              experiment=space(optimizer__radius=[])),
    sweep_cli("grid-value-out-of-range", "sweep.space.optimizer.radius: optimizer.radius must be in [0, inf), got -1.0",
              experiment=space(optimizer__radius=[0.1, -1.0])),
    sweep_cli("unknown-distribution", "sweep.space.train.lr.dist must be one of uniform, loguniform, randint, choice, got 'gaussian'",
              experiment=space(train__lr={"dist": "gaussian", "low": 0.01, "high": 1})),
    sweep_cli("loguniform-from-zero", "sweep.space.train.lr: loguniform needs low > 0, got 0",
              experiment=space(train__lr={"dist": "loguniform", "low": 0, "high": 1})),
    sweep_cli("seed-swept-as-a-key", "sweep.space.train.seed: list seeds under sweep.seeds instead", experiment=space(train__seed=[0, 1])),
    sweep_cli("no-seeds", "sweep.seeds must list at least one seed", experiment={"sweep": {"seeds": []}}),
    sweep_cli("unknown-search", "sweep.search must be one of grid, random, optuna, got 'bayes'", experiment={"sweep": {"search": "bayes"}}),
    sweep_cli("max-concurrent-zero", "sweep.max_concurrent_trials must be in [1, inf), got 0", "--max-concurrent", "0"),
    sweep_cli("unknown-wandb-mode", ("argument --wandb: invalid choice: 'bogus'", "'offline', 'online', 'disabled'"), "--wandb", "bogus"),
    sweep_cli("resume-with-nothing-to-resume", ("--resume: nothing to resume", "run without --resume first"), "--resume"),
    sweep_cli("address-not-host-port", "--address must be 'auto', host:port or ray://host:port, got 'nowhere'", "--address", "nowhere"),
    sweep_cli("address-unreachable", ("--address 127.0.0.1:1: cannot reach the Ray cluster", "is `ray start --head` running there?"),
              "--address", "127.0.0.1:1", within_s=10),
    pytest.param(sweep_cli("gpu-without-gpus", "sweep.resources_per_trial.gpu is 0.5 but the Ray cluster has 0 GPUs; lower it",
                           experiment={"sweep": {"resources_per_trial": {"cpu": 1, "gpu": 0.5}}}), marks=[NO_GPU, pytest.mark.slow], id="gpu-without-gpus"),
    # the Python API
    api("api-unknown-method", "unknown method 'adam'; known: gradnorm, hero, sam, sgd", lambda: methods.create("adam", mlp())),
    api("api-unknown-method-option", ("unknown optimizer option 'rho'; known: lr, momentum", "radius"), lambda: methods.create("sam", mlp(), rho=0.1)),
    api("api-negative-radius", "optimizer.radius must be a finite number >= 0, got -0.1", lambda: methods.create("hero", mlp(), radius=-0.1)),
    api("api-negative-hessian-coef", "optimizer.hessian_coef must be a finite number >= 0, got -1.0",
        lambda: methods.create("hero", mlp(), hessian_coef=-1.0)),
    api("api-unknown-hvp-mode", "optimizer.hvp must be one of auto, fd, exact, got 'approx'", lambda: methods.create("hero", mlp(), hvp="approx")),
    api("api-hessian-every-zero", "optimizer.hessian_every must be an integer >= 1, got 0", lambda: methods.create("hero", mlp(), hessian_every=0)),
    api("api-unknown-model", ("unknown model 'resnet19'; known: ", "resnet20"), lambda: models.create("resnet19", (3, 32, 32), 10)),
    api("api-label-noise", "data.label_noise must be in [0, 1), got 1.2", lambda: config.from_dict({"data": {"label_noise": 1.2}})),
    api("api-missing-dataset", ("mnist files not found", "set data.download: true"),
        lambda: data.load("mnist", root="missing"), error=DatasetNotFoundError),
    api("api-ptq-bits", "evaluate.ptq_bits must be integers in [2, 16], got 17", lambda: metrics.quantize_weights(mlp(), 17)),
    api("api-zero-probes", "evaluate.hessian.probes must be >= 1, got 0",
        lambda: metrics.hessian_trace(mlp(), F.cross_entropy, [(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long))], probes=0)),
    api("api-negative-sigma", "evaluate.weight_noise.sigmas must be >= 0, got -0.1",
        lambda: metrics.weight_noise_accuracy(mlp(), None, sigmas=[-0.1], draws=1)),
    api("api-config-lr-zero", "train.lr must be in (0, inf), got 0.0", lambda: config.from_dict({"train": {"lr": 0}})),
]


def experiment_text(mistake):
    if isinstance(mistake.experiment, str):
        return mistake.experiment
    raw = {section: (dict(values) if isinstance(values, dict) else values) for section, values in EXPERIMENT.items()}
    for section, values in (mistake.experiment or {}).items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    return yaml.safe_dump(raw)


def run_cli(mistake, folder, capsys):
    """(exit code, the error lines on stderr) of `hero-bench` with the mistake's arguments."""
    if mistake.process:
        proc = subprocess.run([sys.executable, "-m", "hero_bench.cli", *mistake.argv], cwd=folder,
                              capture_output=True, text=True, timeout=300)
        code, err = proc.returncode, proc.stderr
    else:
        try:
            code = cli.main(list(mistake.argv))
        except SystemExit as exc:  # argparse rejects the flag itself
            code = exc.code
        err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("hero-bench") and ": error: " in line]


def test_the_table_covers_enough_distinct_mistakes():
    ids = [m.values[0].id if hasattr(m, "values") else m.id for m in MISTAKES]
    assert len(ids) == len(set(ids)) >= 25


@pytest.mark.parametrize("mistake", [pytest.param(m, marks=pytest.mark.slow, id=m.id) if isinstance(m, Mistake) and m.process
                                     else m for m in MISTAKES], ids=lambda m: m.id)
def test_a_mistake_is_one_clear_line_a_failure_and_no_files(mistake, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.yaml").write_text(experiment_text(mistake))
    started = time.monotonic()
    if mistake.call is not None:
        with pytest.raises(mistake.error) as info:
            mistake.call()
        message = str(info.value)
        assert "\n" not in message
    else:
        code, errors = run_cli(mistake, tmp_path, capsys)
        assert code == 2 and len(errors) == 1, errors
        message = errors[0]
    if mistake.within_s is not None:
        assert time.monotonic() - started < mistake.within_s
    for part in mistake.expect:
        assert part in message
    # nothing written: no results/, runs/, ray_results/, wandb/ ... and no code ran
    assert [p.name for p in tmp_path.iterdir()] == ["exp.yaml"]
