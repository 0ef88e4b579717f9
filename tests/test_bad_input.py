"""Every user mistake ends with one clear line naming the field or file and what is allowed, a
failure (exit code 2 from `hero-bench`, a ConfigError or DatasetNotFoundError from the Python API),
within seconds, with no files written and no Ray started. One table of mistakes across experiment
files, YAML fields, CLI flags, results tables and the Python API; each runs with the working
directory an empty folder that holds only its files (the experiment file exp.yaml, a damaged table).

A mistake in the experiment itself (`both`) runs through `hero-bench train` and `hero-bench sweep`
alike; `sweep.space`, `sweep.metric` and the sweep's flags only through `sweep` (train ignores them).
"""
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import ray
import torch
import torch.nn.functional as F
import yaml

from hero_bench import cli, config, data, methods, metrics, models
from hero_bench import sweep  # noqa: F401 - imported here, so timings below measure checks, not imports
from hero_bench.errors import ConfigError, DatasetNotFoundError
from lab_plugins import LAB
from tiny import experiment

# W&B offline, as by default: a refused experiment must not leave even an offline run behind
EXPERIMENT = experiment(name="bad", train={"epochs": 1}, tracking={"wandb": "offline"})
WITHIN_S = 10  # a refusal comes within seconds: before any data is loaded, model built or Ray started
STARTUP_S = 20  # and a new process first imports torch, slow on a busy machine
TABLE = Path(__file__).parent / "fixtures" / "trials_small.csv"
EXAMPLE_PLUGIN = (Path(__file__).parents[1] / "examples" / "my_plugin.py").read_text()


@dataclass(frozen=True)
class Mistake:
    id: str
    expect: tuple  # parts of the one-line message
    argv: tuple = ()  # `hero-bench` arguments; the experiment file is exp.yaml
    experiment: object = None  # sections that replace EXPERIMENT's (one level deep), or the file's raw text or bytes
    files: dict = field(default_factory=dict)  # more files in the folder: relative path -> text or bytes
    call: Callable | None = None  # a Python API call that raises `error`
    error: type = ConfigError
    process: bool = False  # a real `hero-bench` process rather than cli.main in this one
    within_s: float = WITHIN_S
    usage: bool = False  # argparse refuses it: its usage lines, then `hero-bench COMMAND: error: ...`
    needs_ray: bool = False  # only the Ray cluster knows (its GPUs): Ray starts, prints its banner and is shut down


def parts(expect):
    return (expect,) if isinstance(expect, str) else tuple(expect)


def train(id, expect, *flags, experiment=None, process=False):
    return Mistake(id, parts(expect), ("train", "exp.yaml", "--quiet", *flags), experiment, process=process)


def sweep_cli(id, expect, *flags, experiment=None, process=False, within_s=WITHIN_S, usage=False, needs_ray=False):
    return Mistake(id, parts(expect), ("sweep", "exp.yaml", *flags), experiment, process=process, within_s=within_s,
                   usage=usage, needs_ray=needs_ray)


def both(id, expect, *flags, experiment=None):
    """The same mistake through `train` and through `sweep`."""
    return [train(f"train:{id}", expect, *flags, experiment=experiment),
            sweep_cli(f"sweep:{id}", expect, *flags, experiment=experiment)]


def api(id, expect, call, error=ConfigError):
    return Mistake(id, parts(expect), call=call, error=error)


def plugin(id, expect, name, source, *flags, command=None, **sections):
    """A plugin module `name` (its `source`) beside exp.yaml: named in the experiment's plugins through
    `train` and `sweep`, or given to `hero-bench COMMAND --plugin` (list, leaderboard, report)."""
    files = {f"{name}.py": source}
    if command is not None:
        return [Mistake(f"{command}:{id}", parts(expect), (command, *flags, "--plugin", name), files=files)]
    return [Mistake(m.id, m.expect, m.argv, {"plugins": [name], **sections}, files) for m in both(id, expect, *flags)]


def table(id, command, content):
    """`hero-bench leaderboard|report` on results/bad/trials.csv holding `content`."""
    return Mistake(id, ("results/bad/trials.csv",), (command, "results/bad"), files={"results/bad/trials.csv": content})


def mlp():
    return models.create("mlp", (1, 4, 4), 3, hidden=[8])


def space(**axes):
    return {"sweep": {"space": {key.replace("__", "."): value for key, value in axes.items()}}}


def billion_laughs(*path):
    """A YAML "billion laughs" under `path`: ten values, then eight levels of ten aliases of the level
    below: a few hundred bytes that expand to 10**9 values."""
    indent = "  " * len(path)
    lines = ["name: bad"] + [f"{'  ' * depth}{key}:" for depth, key in enumerate(path)]
    lines.append(f"{indent}l0: &l0 [{', '.join(['1'] * 10)}]")
    lines += [f"{indent}l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


def damaged(edit):
    """The small trials table of tests/fixtures with `edit` applied to its lines."""
    return "\n".join(edit(TABLE.read_text().splitlines())) + "\n"


def text_in_test_acc(lines):
    """Every row's test_acc replaced by text."""
    column = lines[0].split(",").index("test_acc")
    return lines[:1] + [",".join(v if i != column else "n/a" for i, v in enumerate(x.split(","))) for x in lines[1:]]


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
HUGE_GRID = {f"optimizer.{key}": [float(v) for v in range(10)] for key in ("radius", "hessian_coef")}
HUGE_GRID.update({"train.lr": [0.01 * (v + 1) for v in range(10)], "train.momentum": [0.1 * v for v in range(10)],
                  "data.label_noise": [0.05 * v for v in range(10)]})

MISTAKES = [
    # ---------------------------------------------------------------- the experiment file itself
    Mistake("train:missing-file", ("experiment file 'nope.yaml' does not exist",), ("train", "nope.yaml")),
    Mistake("sweep:missing-file", ("experiment file 'nope.yaml' does not exist",), ("sweep", "nope.yaml")),
    Mistake("train:file-is-a-folder", ("experiment file 'results' is not a file",), ("train", "results"), files={"results/.keep": ""}),
    Mistake("sweep:file-is-a-folder", ("experiment file 'results' is not a file",), ("sweep", "results"), files={"results/.keep": ""}),
    *both("file-not-utf8", "experiment file exp.yaml is not UTF-8 text (byte 0xe9 at offset 9)", experiment=b"name: caf\xe9\n"),
    *both("file-is-binary", "experiment file exp.yaml is not UTF-8 text (byte 0x89 at offset 0)",
          experiment=b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
    *both("file-empty", "experiment file exp.yaml is empty; see experiments/quickstart.yaml", experiment=""),
    *both("file-only-comments", "experiment file exp.yaml is empty", experiment="# to do: the experiment\n"),
    *both("file-too-big", ("experiment file exp.yaml is 1,800,0", "bytes; an experiment file is YAML text of at most 1,048,576"),
          experiment="name: bad\n" + "# padding\n" * 180_000),
    *both("file-without-name", "exp.yaml has no name: give the experiment one (`name: my_experiment`)",
          experiment="train: {epochs: 1}\n"),
    *both("yaml-not-a-mapping", "an experiment file must be a YAML mapping of sections, got list", experiment="- a\n- b\n"),
    *both("yaml-a-scalar", "an experiment file must be a YAML mapping of sections, got str", experiment="just some text\n"),
    train("malformed-yaml", ("malformed YAML in exp.yaml at line 3, column 1", "expected ',' or ']'"),
          experiment="name: x\ndata: {name: [digits\n", process=True),
    *both("duplicate-key", "malformed YAML in exp.yaml at line 4, column 3: duplicate key 'epochs' (first at line 3)",
          experiment="name: bad\ntrain:\n  epochs: 1\n  epochs: 2\n"),
    *both("duplicate-section", "malformed YAML in exp.yaml at line 3, column 1: duplicate key 'name' (first at line 1)",
          experiment="name: bad\ntrain: {epochs: 1}\nname: other\n"),
    *both("duplicate-grid-axis", "at line 5, column 5: duplicate key 'optimizer.radius' (first at line 4)",
          experiment="name: bad\nsweep:\n  space:\n    optimizer.radius: [0.1]\n    optimizer.radius: [0.5]\n"),
    *both("billion-laughs-in-model-args", "exp.yaml expands to more than 100,000 values (aliases of aliases?)",
          experiment=billion_laughs("model", "args")),
    *both("billion-laughs-in-sweep-space", "exp.yaml expands to more than 100,000 values",
          experiment=billion_laughs("sweep", "space")),
    *both("alias-inside-its-own-anchor", "exp.yaml nests deeper than 20 levels (an experiment needs about 5; an alias inside its own anchor never ends)",
          experiment="name: bad\nmodel:\n  args:\n    hidden: &loop [1, *loop]\n"),
    *both("nested-thousands-deep", "exp.yaml nests deeper than 20 levels",
          experiment="name: bad\nmodel: {args: {hidden: " + "[" * 1000 + "]" * 1000 + "}}\n"),
    *both("nested-30-deep", "exp.yaml nests deeper than 20 levels", experiment="name: bad\nmodel: {args: {hidden: " + "[" * 30 + "]" * 30 + "}}\n"),
    *both("control-character", "malformed YAML in exp.yaml: unacceptable character #x0000", experiment="name: bad\x00\n"),
    *both("impossible-date", "malformed YAML in exp.yaml at line 2, column 17: cannot read '2024-13-45': month must be in 1..12",
          experiment="name: bad\ntrain: {epochs: 2024-13-45}\n"),
    *both("integer-of-5000-digits", ("malformed YAML in exp.yaml at line 2, column 17: cannot read '1000", "...: Exceeds the limit (4300 digits)"),
          experiment="name: bad\ntrain: {epochs: 1" + "0" * 5000 + "}\n"),
    *both("yaml-tag-that-runs-code", ("malformed YAML in exp.yaml at line 1", "could not determine a constructor for the tag"),
          experiment='name: !!python/object/apply:os.system ["touch code-ran"]\n'),
    *both("key-that-is-a-number", "unknown key '1'; allowed in this section: name, plugins, data", experiment="name: bad\n1: one\n"),
    *both("section-not-a-mapping", "train must be a mapping with keys epochs, batch_size, lr,", experiment={"train": 5}),
    # ---------------------------------------------------------------- names
    *both("name-ends-in-a-newline", ("name must be 1 to 100 letters", "got 'rt\\n'"), "--set", 'name="rt\\n"'),
    *both("name-of-300-characters", ("name must be 1 to 100 letters", "got 'aaaa"), "--set", "name=" + "a" * 300),
    *both("name-empty", ("name must be 1 to 100 letters", "got ''"), "--set", "name=''"),
    *both("name-a-number", "name must be str, got 5", "--set", "name=5"),
    *both("name-dot-dot", ("name must be 1 to 100 letters", "got '..'"), "--set", "name=.."),
    sweep_cli("name-climbs-out-of-results", ("name must be 1 to 100 letters", "(no '/' or '..'", "got '../escape'"),
              experiment={"name": "../escape"}, process=True),
    sweep_cli("name-is-an-absolute-path", ("name must be 1 to 100 letters", "got '/tmp/abs'"), "--set", "name=/tmp/abs"),
    *both("flag-value-is-not-evaluated", ("name must be 1 to 100 letters", "got \"__import__('os').getcwd()\""),
          "--set", "name=__import__('os').getcwd()"),
    # ---------------------------------------------------------------- --set
    *both("flag-without-value", "--set expects key=value (e.g. optimizer.radius=0.5), got 'radius'", "--set", "radius"),
    *both("flag-unknown-key", ("unknown key 'train.nope'", "allowed: epochs, batch_size"), "--set", "train.nope=1"),
    *both("flag-into-a-value", "unknown key 'train.epochs.x': 'train.epochs' is a value, not a section", "--set", "train.epochs.x=1"),
    *both("flag-into-a-list", "cannot set 'model.args.hidden.x': model.args.hidden is list, not a mapping",
          "--set", "model.args.hidden.x=1"),
    *both("flag-into-a-list-of-grids", "cannot set 'sweep.space.train.lr': sweep.space is list, not a mapping",
          "--set", "sweep.space.train.lr=[0.1]", experiment={"sweep": {"space": [{"optimizer.radius": [0.5]}]}}),
    *both("flag-malformed-value", "malformed YAML in --set train.epochs at line 1", "--set", "train.epochs=[1"),
    *both("flag-tag-that-runs-code", "malformed YAML in --set name at line 1, column 1: could not determine a constructor",
          "--set", 'name=!!python/object/apply:os.system ["touch code-ran"]'),
    *both("flag-billion-laughs", "--set model.args expands to more than 100,000 values",
          "--set", "model.args={a: &a [1,1,1,1,1,1,1,1,1,1], b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], "
          "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], e: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]}"),
    # ---------------------------------------------------------------- registered names and factory arguments
    *both("unknown-dataset", ("data.name: unknown dataset 'imagenet'; known: ", "digits"), "--set", "data.name=imagenet"),
    *both("unknown-model", ("model.name: unknown model 'resnet19'; known: ", "resnet20"), experiment={"model": {"name": "resnet19"}}),
    *both("unknown-method", "optimizer.name: unknown method 'adam'; known: gradnorm, hero, sam, sgd", "--set", "optimizer.name=adam"),
    *both("unknown-dataset-option", ("data.args.colour is not an option of dataset 'synthetic'; allowed: ", "num_samples"),
          experiment={"data": {"name": "synthetic", "args": {"colour": True}}}),
    *both("unknown-model-option", "model.args.nope is not an option of model 'mlp'; allowed: hidden", "--set", "model.args.nope=1"),
    *both("model-args-key-a-number", "model.args keys must be text, got 1", experiment={"model": {"name": "mlp", "args": {1: 2}}}),
    *both("hidden-width-zero", "model.args.hidden must be a list of integers in [1, 65536], got [0]", "--set", "model.args.hidden=[0]"),
    *both("hidden-not-a-list", "model.args.hidden must be a list of integers in [1, 65536], got 128", "--set", "model.args.hidden=128"),
    *both("hidden-width-a-fraction", "model.args.hidden must be a list of integers in [1, 65536], got [8.5]", "--set", "model.args.hidden=[8.5]"),
    *both("hidden-width-of-a-billion", "model.args.hidden must be a list of integers in [1, 65536], got [1000000000]",
          "--set", "model.args.hidden=[1000000000]"),
    *both("cnn-channels-zero", "model.args.channels must be an integer in [1, 65536], got 0",
          experiment={"model": {"name": "mnist1d_cnn", "args": {"channels": 0}}}),
    *both("data-args-not-a-number", "data.args.num_samples must be an integer in [1, 1048576], got 'abc'", "--set", "data.args.num_samples=abc"),
    *both("data-args-a-hundred-million-samples", "data.args.num_samples must be an integer in [1, 1048576], got 100000000",
          "--set", "data.args.num_samples=100000000"),
    *both("data-args-nan", "data.args.class_sep must be a number in [0, inf), got nan", "--set", "data.args.class_sep=.nan"),
    *both("data-args-shape-of-two", "data.args.input_shape must be a list of 3 integers in [1, 4096], got [3, 32]",
          "--set", "data.args.input_shape=[3, 32]"),
    *both("data-args-augment-as-text", "data.args.augment must be true or false, got 'yes'",
          experiment={"data": {"name": "cifar10", "root": "missing", "args": {"augment": "yes"}}}),
    *both("data-args-mnist1d-padding-reversed", "data.args.padding must be [low, high] with low <= high, got [60, 36]",
          experiment={"data": {"name": "mnist1d", "root": "cache", "args": {"padding": [60, 36]}}}),
    *both("data-args-mnist1d-no-translation", "data.args.max_translation must be an integer in [1, 10000], got 0",
          experiment={"data": {"name": "mnist1d", "args": {"max_translation": 0}}}),
    # the dry run, before Ray: what only loading the data, building the model or a step shows
    *both("data-args-a-gigabyte-of-synthetic-data", ("data.args: synthetic data of (num_samples + num_test) x input_shape = "
          "3,222,761,472 values; at most 268,435,456"), "--set", "data.args.num_samples=1048576", "--set", "data.args.input_shape=[3, 32, 32]"),
    *both("missing-torchvision-dataset", ("cifar10 files not found or corrupted under missing/cifar-10-batches-py", "set data.download: true"),
          experiment={"data": {"name": "cifar10", "root": "missing", "args": {}}}),
    # ---------------------------------------------------------------- plugins (docs/extending.md)
    *both("plugin-missing", ("plugin nowhere: no module nowhere in ", "or on Python's path"), experiment={"plugins": ["nowhere"]}),
    *both("plugin-flag-missing", ("plugin nowhere: no module nowhere in ", "or on Python's path"), "--plugin", "nowhere"),
    Mistake("list:plugin-flag-missing", ("plugin nowhere: no module nowhere in ",), ("list", "--plugin", "nowhere")),
    *both("plugins-not-a-list", "plugins must be a list of str, got 'lab_plugin'", experiment={"plugins": "lab_plugin"}),
    *both("plugin-not-a-module-name", "plugins: 'my-models' is not a Python module name", experiment={"plugins": ["my-models"]}),
    *plugin("plugin-import-fails", ("plugin broken_plugin (", "broken_plugin.py) cannot be imported: ModuleNotFoundError: "
            "No module named 'not_a_module_anywhere'"), "broken_plugin", "import not_a_module_anywhere\n"),
    *plugin("plugin-raises", "cannot be imported: RuntimeError: needs a GPU and a license", "raising_plugin",
            "raise RuntimeError('needs a GPU\\nand a license')\n"),
    *plugin("plugin-syntax-error", "syntax_plugin.py) cannot be imported: SyntaxError: invalid syntax (syntax_plugin.py, line 1)",
            "syntax_plugin", "def (:\n"),
    *plugin("plugin-takes-a-built-in-name", ("model 'mlp' is already registered (built-in); plugin dup_plugin (",
            "dup_plugin.py) registers it again"), "dup_plugin",
            "from hero_bench.models import MODELS, mlp\n\nMODELS.register('mlp')(mlp)\n"),
    *[Mistake(m.id, m.expect, m.argv, {"plugins": ["lab_plugin", "lab_copy"]}, {"lab_plugin.py": LAB, "lab_copy.py": LAB})
      for m in both("two-plugins-one-name", ("model 'lab_net' is already registered (plugin lab_plugin (",
                                             "lab_plugin.py)); plugin lab_copy (", "lab_copy.py) registers it again"))],
    *plugin("plugin-model-signature", ("sig_model.py): model 'tiny': hero-bench calls it as tiny(input_shape=..., num_classes=...), "
            "which its signature refuses: missing a required argument: 'x'"), "sig_model",
            "from hero_bench.models import MODELS\n\n\n@MODELS.register('tiny')\ndef tiny(x):\n    return x\n"),
    *plugin("plugin-dataset-signature", ("sig_data.py): dataset 'sig': hero-bench calls it as sig(root=..., download=...), which "
            "its signature refuses: got an unexpected keyword argument 'download'"), "sig_data",
            "from hero_bench.data import DATASETS\n\n\n@DATASETS.register('sig')\ndef sig(*, root):\n    return root\n",
            command="list"),
    *plugin("plugin-metric-signature", ("sig_metric.py): metric 'sig': hero-bench calls it as sig(model, data, evaluate, seed), "
            "which its signature refuses: too many positional arguments"), "sig_metric",
            "from hero_bench.metrics import METRICS\n\n\n@METRICS.register('sig')\ndef sig(model, data):\n    return {}\n",
            "results/bad", command="leaderboard"),
    *plugin("plugin-method-not-a-rule", "not_rule.py): method 'gsam': a method is a hero_bench.rules.Rule, got function", "not_rule",
            "from hero_bench.methods import METHODS\n\nMETHODS.register('gsam')(lambda step: step.gradient())\n",
            "results/bad", command="report"),
    *plugin("plugin-gradient-signature", ("sig_rule.py): method 'own': hero-bench calls it as own(step), which its signature "
            "refuses: missing a required argument: 'alpha'"), "sig_rule",
            "from hero_bench.methods import Rule, register\n\n\ndef own(step, alpha):\n    return step.gradient()\n\n\n"
            "register(Rule('own', perturbs=False, hessian=None, objective='L(W)', gradient=own))\n"),
    *plugin("plugin-model-width-zero", "model.args.width must be an integer in [1, 65536], got 0", "my_plugin", EXAMPLE_PLUGIN,
            model={"name": "tanh_mlp", "args": {"width": 0}}),
    *plugin("plugin-method-unknown-option", "optimizer.args.beta is not an option of method 'gsam'; allowed: alpha", "my_plugin",
            EXAMPLE_PLUGIN, optimizer={"name": "gsam", "args": {"beta": 1.0}}),
    *plugin("plugin-method-option-of-a-rule", "optimizer.args: method 'samgn' is a rule and takes no arguments, got alpha",
            "my_plugin", EXAMPLE_PLUGIN, optimizer={"name": "samgn", "args": {"alpha": 1.0}}),
    Mistake("sweep:grid-plugin-model-width-zero", ("sweep.space point {model.args.width=0}: model.args.width must be an integer in [1, 65536], got 0",),
            ("sweep", "exp.yaml"), {"plugins": ["my_plugin"], "model": {"name": "tanh_mlp", "args": {}},
                                    "sweep": {"space": {"model.args.width": [8, 0]}}}, {"my_plugin.py": EXAMPLE_PLUGIN}),
    sweep_cli("swept-plugins", "sweep.space.plugins: name, plugins, sweep.* and tracking.* belong to the whole experiment",
              experiment=space(plugins=[["my_plugin"]])),
    *both("mnist-files-missing", ("mnist files not found or corrupted under missing/MNIST/raw", "set data.download: true"),
          experiment={"data": {"name": "mnist", "root": "missing", "args": {}}}),
    *both("val-fraction-leaves-no-training-data", "data.val_fraction=0.9999 leaves an empty split of the 256 training samples",
          "--set", "data.val_fraction=0.9999"),
    *[pytest.param(m, marks=NO_GPU, id=m.id) for m in both("device-cuda-without-a-gpu", "train.device is 'cuda' but", "--set", "train.device=cuda")],
    *both("model-of-34-gigabytes", ("model mlp (model.args.hidden=[65536, 65536, 65536]) has 8,591,376,387 parameters: with the "
                                     "activations of a batch of 32 (train.batch_size) and the data, a trial needs about 160.2 GiB, more than 90% of "),
          "--set", "model.args.hidden=[65536, 65536, 65536]"),
    # ---------------------------------------------------------------- numbers: types, finiteness, ranges
    *both("label-noise-one", "data.label_noise must be in [0, 1), got 1.0", experiment={"data": {"label_noise": 1.0}}),
    *both("label-noise-flag", "data.label_noise must be in [0, 1), got 1.5", "--set", "data.label_noise=1.5"),
    *both("label-noise-nan", "data.label_noise must be a finite number, got nan", "--set", "data.label_noise=.nan"),
    *both("val-fraction-zero", "data.val_fraction must be in (0, 1), got 0.0", experiment={"data": {"val_fraction": 0}}),
    *both("epochs-zero", "train.epochs must be in [1, 100000], got 0", "--set", "train.epochs=0"),
    *both("epochs-a-trillion", "train.epochs must be in [1, 100000], got 1000000000000", "--set", "train.epochs=1000000000000"),
    *both("epochs-not-a-number", "train.epochs must be int, got 'two'", experiment={"train": {"epochs": "two"}}),
    *both("epochs-a-fraction", "train.epochs must be int, got 2.5", "--set", "train.epochs=2.5"),
    *both("epochs-true", "train.epochs must be int, got True", "--set", "train.epochs=true"),
    *both("batch-size-of-a-billion", "train.batch_size must be in [1, 1048576], got 1000000000", "--set", "train.batch_size=1000000000"),
    *both("compute-factor-1000", "train.compute_factor must be in [1, 100], got 1000", "--set", "train.compute_factor=1000"),
    *both("threads-100000", "train.threads must be in [1, 1024], got 100000", "--set", "train.threads=100000"),
    *both("lr-nan", "train.lr must be a finite number, got nan", "--set", "train.lr=.nan"),
    *both("lr-inf", "train.lr must be a finite number, got inf", "--set", "train.lr=.inf"),
    *both("lr-as-text", "train.lr must be a finite number, got 'fast'", "--set", "train.lr=fast"),
    *both("momentum-nan", "train.momentum must be a finite number, got nan", "--set", "train.momentum=.nan"),
    *both("momentum-one", "train.momentum must be in [0, 1), got 1.0", "--set", "train.momentum=1"),
    *both("weight-decay-inf", "train.weight_decay must be a finite number, got inf", "--set", "train.weight_decay=.inf"),
    # what torch keeps in float32 overflows past 3.4e38: such a number is refused, and lr and weight decay stop far below
    *both("lr-beyond-float32", "train.lr must be a finite number within float32's range (|x| <= 3.4e38), got 1e+39", "--set", "train.lr=1e39"),
    *both("lr-at-float32-max", "train.lr must be in (0, 1000], got 3.4e+38", "--set", "train.lr=3.4e38"),
    *both("weight-decay-beyond-float32", "train.weight_decay must be a finite number within float32's range", "--set", "train.weight_decay=3.5e38"),
    *both("weight-decay-above-1000", "train.weight_decay must be in [0, 1000], got 1001.0", "--set", "train.weight_decay=1001"),
    *both("radius-beyond-float32", "optimizer.radius must be a finite number or null within float32's range", "--set", "optimizer.radius=1e39"),
    *both("weight-decay-negative-inf", "train.weight_decay must be a finite number, got -inf", experiment={"train": {"weight_decay": float("-inf")}}),
    *both("lr-steps-nan", "train.lr_steps must be a finite number, got nan", "--set", "train.lr_steps=[.nan]"),
    *both("lr-step-negative", "train.lr_steps must be in (0, 1), got -3.0", "--set", "train.lr_steps=[-3.0]"),
    *both("lr-step-past-the-end", "train.lr_steps must be in (0, 1), got 1.5", "--set", "train.lr_steps=[0.5, 1.5]"),
    *both("seed-2-to-the-70", "train.seed must be in [0, 4294967295], got 1180591620717411303424", "--set", f"train.seed={2**70}"),
    *both("seed-negative", "train.seed must be in [0, 4294967295], got -1", "--set", "train.seed=-1"),
    *both("unknown-schedule", "train.schedule must be one of cosine, step, constant, got 'linear'", experiment={"train": {"schedule": "linear"}}),
    *both("radius-inf", "optimizer.radius must be a finite number or null, got inf", "--set", "optimizer.radius=.inf"),
    *both("hessian-coef-nan", "optimizer.hessian_coef must be a finite number or null, got nan", "--set", "optimizer.hessian_coef=.nan"),
    *both("unknown-hvp-mode", "optimizer.hvp must be one of auto, fd, exact, got 'approx'", experiment={"optimizer": {"hvp": "approx"}}),
    *both("hessian-every-zero", "optimizer.hessian_every must be in [1, inf), got 0", "--set", "optimizer.hessian_every=0"),
    *both("ptq-1-bit", "evaluate.ptq_bits must be in [2, 16], got 1", experiment={"evaluate": {"ptq_bits": [8, 1]}}),
    *both("ptq-17-bits", "evaluate.ptq_bits must be in [2, 16], got 17", "--set", "evaluate.ptq_bits=[17]"),
    *both("negative-sigma", "evaluate.weight_noise.sigmas must be in [0, inf), got -0.1", "--set", "evaluate.weight_noise.sigmas=[-0.1]"),
    *both("sigma-inf", "evaluate.weight_noise.sigmas must be a finite number, got inf", "--set", "evaluate.weight_noise.sigmas=[.inf]"),
    *both("zero-probes", "evaluate.hessian.probes must be in [1, 10000], got 0", "--set", "evaluate.hessian.probes=0"),
    *both("zero-samples", "evaluate.hessian.samples must be in [1, 1048576], got 0", experiment={"evaluate": {"hessian": {"samples": 0}}}),
    *both("hessian-tol-nan", "evaluate.hessian.tol must be a finite number, got nan", "--set", "evaluate.hessian.tol=.nan"),
    # ---------------------------------------------------------------- the sweep section: the schema's rules
    *both("no-seeds", "sweep.seeds must list at least one seed", experiment={"sweep": {"seeds": []}}),
    *both("seed-list-negative", "sweep.seeds must be in [0, 4294967295], got -1", "--set", "sweep.seeds=[-1]"),
    *both("seed-list-fraction", "sweep.seeds must be int, got 0.5", "--set", "sweep.seeds=[0.5]"),
    *both("seed-list-2-to-the-70", "sweep.seeds must be in [0, 4294967295], got 1180591620717411303424", "--set", f"sweep.seeds=[0, {2**70}]"),
    *both("seed-list-repeats", "sweep.seeds lists seed 1 twice", "--set", "sweep.seeds=[0, 1, 1]"),
    *both("confirm-seed-also-tunes", "sweep.confirm_seeds must be fresh seeds, not in sweep.seeds: 0 is in both",
          "--set", "sweep.confirm_seeds=[0, 5]"),
    *both("confirm-seeds-with-optuna", "sweep.confirm_seeds and sweep.bracket need configurations known before the sweep runs",
          experiment={"sweep": {"search": "optuna", "confirm_seeds": [7]}}),
    *both("bracket-negative", "sweep.bracket must be in [0, 10], got -1", "--set", "sweep.bracket=-1"),
    *both("hypothesis-unknown-family", "hypotheses[0].method: 'adam' is no method family",
          experiment={"hypotheses": [{"method": "adam", "baseline": "sgd"}]}),
    *both("hypothesis-unknown-metric", "hypotheses[0].metric: 'test_accuracy' is not a metric with a better direction",
          experiment={"hypotheses": [{"method": "hero", "baseline": "sgd", "metric": "test_accuracy"}]}),
    *both("hypothesis-unknown-direction", "hypotheses[0].direction must be one of greater, less, got 'up'",
          experiment={"hypotheses": [{"method": "hero", "baseline": "sgd_3x", "direction": "up"}]}),
    *both("hypothesis-group-key", "hypotheses[0].groups.train.lr is not a group key",
          experiment={"hypotheses": [{"method": "hero", "baseline": "sgd", "groups": {"train.lr": 0.1}}]}),
    *both("hypothesis-without-baseline", "hypotheses[0]: baseline is required",
          experiment={"hypotheses": [{"method": "hero"}]}),
    *both("seeds-not-a-list", "sweep.seeds must be a list of int, got 3", "--set", "sweep.seeds=3"),
    *both("unknown-search", "sweep.search must be one of grid, random, quasirandom, optuna, got 'bayes'", experiment={"sweep": {"search": "bayes"}}),
    *both("search-seed-negative", "sweep.search_seed must be in [0, 4294967295], got -1", "--set", "sweep.search_seed=-1"),
    *both("max-failures-below-minus-one", "sweep.max_failures must be in [-1, inf), got -2", "--set", "sweep.max_failures=-2"),
    *both("report-every-negative", "sweep.report_every_s must be in [0, inf), got -1.0", "--set", "sweep.report_every_s=-1"),
    *both("max-failures-forever-with-a-bad-seed", "sweep.seeds must be in [0, 4294967295], got -1",
          "--set", "sweep.seeds=[-1]", "--set", "sweep.max_failures=-1"),
    *both("num-samples-a-million", "sweep.num_samples must be in [1, 10000], got 1000000", "--set", "sweep.num_samples=1000000"),
    *both("resources-nothing", "sweep.resources_per_trial needs cpu > 0 or gpu > 0",
          experiment={"sweep": {"resources_per_trial": {"cpu": 0, "gpu": 0}}}),
    *both("resources-cpu-nan", "sweep.resources_per_trial.cpu must be a finite number, got nan", "--set", "sweep.resources_per_trial.cpu=.nan"),
    *both("asha-reduction-one", "sweep.asha.reduction_factor must be in (1, inf), got 1.0", "--set", "sweep.asha.reduction_factor=1"),
    # ---------------------------------------------------------------- the sweep: metric, space, size
    sweep_cli("metric-nobody-reports", "sweep.metric must be one of the metrics every epoch reports (Ray Tune needs it in each report): "
              "val_acc, test_acc, train_acc, train_loss, lr, epoch, epoch_time_s; got 'nope'", "--set", "sweep.metric=nope"),
    sweep_cli("metric-reported-only-at-the-end", ("sweep.metric must be one of the metrics every epoch reports", "got 'ptq_acc_8bit'"),
              "--set", "sweep.metric=ptq_acc_8bit"),
    sweep_cli("metric-empty", ("sweep.metric must be one of the metrics every epoch reports", "got ''"), "--set", "sweep.metric=''"),
    sweep_cli("space-an-empty-list", "sweep.space is an empty list: give a mapping of keys, or a list of grids", "--set", "sweep.space=[]"),
    sweep_cli("space-not-a-mapping", "sweep.space must be a mapping or a list of mappings, got 'radius'", "--set", "sweep.space=radius"),
    sweep_cli("unknown-swept-key", ("sweep.space.optimizer.radiuss: unknown key 'optimizer.radiuss'", "allowed: name, radius"),
              experiment=space(optimizer__radiuss=[0.1])),
    *both("swept-key-a-number", "sweep.space keys must be text, got 1", experiment={"sweep": {"space": {1: [2]}}}),
    sweep_cli("empty-grid-axis", "sweep.space.optimizer.radius is an empty list: a grid axis needs at least one value",
              experiment=space(optimizer__radius=[])),
    sweep_cli("grid-value-out-of-range", "sweep.space.optimizer.radius: optimizer.radius must be in [0, inf), got -1.0",
              experiment=space(optimizer__radius=[0.1, -1.0])),
    sweep_cli("grid-value-inf", "sweep.space.optimizer.radius: optimizer.radius must be a finite number or null, got inf",
              experiment=space(optimizer__radius=[float("inf"), 0.5])),
    sweep_cli("grid-value-nan", "sweep.space.train.lr: train.lr must be a finite number, got nan", experiment=space(train__lr=[0.1, float("nan")])),
    sweep_cli("grid-value-wrong-type", "sweep.space.train.epochs: train.epochs must be int, got 'ten'", experiment=space(train__epochs=["ten"])),
    sweep_cli("grid-value-unknown-method", "sweep.space.optimizer.name: optimizer.name: unknown method 'adam'",
              experiment=space(optimizer__name=["sgd", "adam"])),
    sweep_cli("grid-constant-out-of-range", "sweep.space.train.momentum: train.momentum must be in [0, 1), got 2.0", experiment=space(train__momentum=2.0)),
    sweep_cli("grid-model-option-unknown", "sweep.space point {model.args.nope=1}: model.args.nope is not an option of model 'mlp'",
              experiment=space(model__args__nope=[1])),
    sweep_cli("grid-hidden-width-zero", "sweep.space point {model.args.hidden=[0]}: model.args.hidden must be a list of integers in [1, 65536]",
              experiment=space(model__args__hidden=[[8], [0]])),
    sweep_cli("grid-model-without-the-base-args", ("sweep.space point {model.name=lenet5}", "model.args.hidden is not an option of model 'lenet5'"),
              experiment=space(model__name=["mlp", "lenet5"])),
    sweep_cli("swept-name", "sweep.space.name: name, plugins, sweep.* and tracking.* belong to the whole experiment and cannot be swept",
              experiment=space(name=["a", "b"])),
    sweep_cli("swept-sweep-key", "sweep.space.sweep.metric: name, plugins, sweep.* and tracking.* belong to the whole experiment",
              experiment=space(sweep__metric=["val_acc"])),
    sweep_cli("swept-tracking-key", "sweep.space.tracking.wandb: name, plugins, sweep.* and tracking.* belong to the whole experiment",
              experiment=space(tracking__wandb=["offline", "disabled"])),
    sweep_cli("seed-swept-as-a-key", "sweep.space.train.seed: list seeds under sweep.seeds instead", experiment=space(train__seed=[0, 1])),
    sweep_cli("unknown-distribution", "sweep.space.train.lr.dist must be one of uniform, loguniform, randint, choice, got 'gaussian'",
              experiment=space(train__lr={"dist": "gaussian", "low": 0.01, "high": 1})),
    sweep_cli("loguniform-from-zero", "sweep.space.train.lr: loguniform needs low > 0, got 0",
              experiment=space(train__lr={"dist": "loguniform", "low": 0, "high": 1})),
    sweep_cli("uniform-beyond-the-range", "sweep.space.optimizer.radius (dist uniform): optimizer.radius must be in [0, inf), got -1.0",
              experiment=space(optimizer__radius={"dist": "uniform", "low": -1, "high": 1})),
    sweep_cli("uniform-to-nan", "sweep.space.train.lr: low and high must be finite numbers with low < high, got 0.1, nan",
              experiment=space(train__lr={"dist": "uniform", "low": 0.1, "high": float("nan")})),
    sweep_cli("uniform-over-an-integer-key", "sweep.space.train.epochs (dist uniform): train.epochs must be int, got 1.0",
              experiment=space(train__epochs={"dist": "uniform", "low": 1, "high": 5})),
    sweep_cli("randint-of-fractions", "sweep.space.train.epochs: randint draws integers from low to high - 1; low and high must be integers",
              experiment=space(train__epochs={"dist": "randint", "low": 1.5, "high": 3})),
    sweep_cli("randint-past-the-range", "sweep.space.train.momentum (dist randint): train.momentum must be in [0, 1), got 1.0",
              experiment=space(train__momentum={"dist": "randint", "low": 0, "high": 2})),
    sweep_cli("choice-out-of-range", "sweep.space.train.lr.values: train.lr must be in (0, 1000], got -1.0",
              experiment=space(train__lr={"dist": "choice", "values": [0.1, -1.0]})),
    sweep_cli("random-choice-of-a-model-without-the-base-args", "model.args.hidden is not an option of model 'lenet5'",
              experiment={"sweep": {"search": "random", "num_samples": 2, "space": {"model.name": {"dist": "choice", "values": ["mlp", "lenet5"]}}}}),
    sweep_cli("optuna-choice-of-a-model-without-the-base-args", "model.args.hidden is not an option of model 'lenet5'",
              experiment={"sweep": {"search": "optuna", "space": {"model.name": {"dist": "choice", "values": ["mlp", "lenet5"]},
                                                                  "train.lr": {"dist": "loguniform", "low": 0.01, "high": 0.1}}}}),
    sweep_cli("distribution-in-a-grid-search", "sweep.space.train.lr: a distribution is drawn by sweep.search random, quasirandom or optuna; "
              "a grid search runs lists (grid axes)", experiment=space(train__lr={"dist": "loguniform", "low": 0.01, "high": 0.1})),
    sweep_cli("random-more-samples-than-choices", "sweep.num_samples is 3, but the distributions of sweep.space give 2 distinct configuration(s)",
              experiment={"sweep": {"search": "random", "num_samples": 3, "space": {"train.lr": {"dist": "choice", "values": [0.1, 0.2]}}}}),
    sweep_cli("quasirandom-samples-of-a-grid-without-distributions", "the distributions of sweep.space[0] give 1 distinct configuration(s)",
              experiment={"sweep": {"search": "quasirandom", "num_samples": 2, "space": [{"optimizer.name": ["sgd"]}]}}),
    sweep_cli("optuna-over-choices-alone", "sweep.space: optuna search needs a uniform or loguniform distribution at each point of the grid",
              experiment={"sweep": {"search": "optuna", "space": {"train.lr": {"dist": "choice", "values": [0.1, 0.2]}}}}),
    sweep_cli("optuna-choice-of-lists", "sweep.space.model.args.hidden: optuna's choices must be numbers, text, true/false or null, got [8]",
              experiment={"sweep": {"search": "optuna", "space": {"model.args.hidden": {"dist": "choice", "values": [[8], [16]]},
                                                                  "train.lr": {"dist": "loguniform", "low": 0.01, "high": 0.1}}}}),
    sweep_cli("union-empty-grid", "sweep.space[0] is empty: each grid of the list needs at least one key", experiment={"sweep": {"space": [{}]}}),
    sweep_cli("union-value-inf", "sweep.space[1].optimizer.radius: optimizer.radius must be a finite number or null, got inf",
              experiment={"sweep": {"space": [{"optimizer.radius": [0.5]}, {"optimizer.radius": [float("inf")]}]}}),
    sweep_cli("grid-of-200000-trials", "the sweep asks for 200,000 trials (sweep.space x sweep.seeds x sweep.num_samples); one sweep runs at most 10,000",
              "--set", "sweep.seeds=[0, 1]", experiment={"sweep": {"space": HUGE_GRID}}),
    sweep_cli("union-of-100001-trials", "the sweep asks for 100,001 trials",
              experiment={"sweep": {"space": [HUGE_GRID, {"optimizer.radius": [0.5]}]}}),
    # ---------------------------------------------------------------- the sweep command's flags
    sweep_cli("max-concurrent-zero", "sweep.max_concurrent_trials must be in [1, inf), got 0", "--max-concurrent", "0"),
    sweep_cli("unknown-wandb-mode", ("argument --wandb: invalid choice: 'bogus'", "'offline', 'online', 'disabled'"), "--wandb", "bogus", usage=True),
    sweep_cli("resume-with-nothing-to-resume", ("--resume: nothing to resume", "run without --resume first"), "--resume"),
    sweep_cli("cpus-the-machine-lacks", ("sweep.resources_per_trial.cpu is 100000 but the Ray cluster has ", "CPUs; lower it"),
              "--set", "sweep.resources_per_trial.cpu=100000"),
    Mistake("results-names-a-file", ("cannot write to ", "afile/bad: Not a directory; choose another parent folder with --results"),
            ("sweep", "exp.yaml", "--results", "afile"), files={"afile": "a file, not a folder\n"}),
    sweep_cli("address-not-host-port", "--address must be 'auto', host:port or ray://host:port, got 'nowhere'", "--address", "nowhere"),
    sweep_cli("address-unreachable", ("--address 127.0.0.1:1: cannot reach the Ray cluster", "is `ray start --head` running there?"),
              "--address", "127.0.0.1:1"),
    pytest.param(sweep_cli("gpu-without-gpus", "sweep.resources_per_trial.gpu is 0.5 but the Ray cluster has 0 GPUs; lower it",
                           experiment={"sweep": {"resources_per_trial": {"cpu": 1, "gpu": 0.5}}}, within_s=60, needs_ray=True),
                 marks=[NO_GPU, pytest.mark.slow], id="gpu-without-gpus"),
    # ---------------------------------------------------------------- the train command's arguments
    Mistake("train-override-without-equals", ("argument KEY=VALUE: expected KEY=VALUE (e.g. optimizer.radius=0.5), got 'bogus'",),
            ("train", "exp.yaml", "bogus"), usage=True),
    Mistake("train-override-without-equals-after-an-option", ("argument KEY=VALUE: expected KEY=VALUE", "got 'bogus'"),
            ("train", "exp.yaml", "--quiet", "optimizer.radius=0.5", "bogus"), usage=True),
    Mistake("train-override-of-an-unknown-key", ("unknown key 'optimizer.radus'", "allowed: name, radius, hessian_coef"),
            ("train", "exp.yaml", "optimizer.radus=0.5", "--quiet")),
    Mistake("train-unknown-wandb-mode", ("argument --wandb: invalid choice: 'bogus'", "'offline', 'online', 'disabled'"),
            ("train", "exp.yaml", "--wandb", "bogus"), usage=True),
    # ---------------------------------------------------------------- damaged results tables
    table("leaderboard-on-a-binary-table", "leaderboard", bytes(range(256)) * 8),
    # a table whose every row is damaged is refused; one damaged row among good ones is skipped with a
    # warning that counts it (tests/test_lifecycle.py)
    table("leaderboard-on-a-ragged-table", "leaderboard", damaged(lambda lines: lines[:1] + [x + ",1,2" for x in lines[1:]])),
    table("leaderboard-on-text-in-a-numeric-column", "leaderboard", damaged(text_in_test_acc)),
    table("report-on-a-binary-table", "report", bytes(range(256)) * 8),
    table("report-on-a-ragged-table", "report", damaged(lambda lines: lines[:1] + [x + ",1,2" for x in lines[1:]])),
    table("report-on-text-in-a-numeric-column", "report", damaged(text_in_test_acc)),
    # ---------------------------------------------------------------- the Python API
    api("api-unknown-method", "unknown method 'adam'; known: gradnorm, hero, sam, sgd", lambda: methods.create("adam", mlp())),
    api("api-unknown-method-option", ("unknown optimizer option 'rho'; known: lr, momentum", "radius"), lambda: methods.create("sam", mlp(), rho=0.1)),
    api("api-negative-radius", "optimizer.radius must be in [0, inf), got -0.1", lambda: methods.create("hero", mlp(), radius=-0.1)),
    api("api-negative-hessian-coef", "optimizer.hessian_coef must be in [0, inf), got -1.0",
        lambda: methods.create("hero", mlp(), hessian_coef=-1.0)),
    api("api-unknown-hvp-mode", "optimizer.hvp must be one of auto, fd, exact, got 'approx'", lambda: methods.create("hero", mlp(), hvp="approx")),
    api("api-hessian-every-zero", "optimizer.hessian_every must be in [1, inf), got 0", lambda: methods.create("hero", mlp(), hessian_every=0)),
    api("api-unknown-model", ("unknown model 'resnet19'; known: ", "resnet20"), lambda: models.create("resnet19", (3, 32, 32), 10)),
    api("api-mlp-width-zero", "model.args.hidden must be a list of integers in [1, 65536], got [8, 0]",
        lambda: models.create("mlp", (1, 4, 4), 3, hidden=[8, 0])),
    api("api-label-noise", "data.label_noise must be in [0, 1), got 1.2", lambda: config.from_dict({"data": {"label_noise": 1.2}})),
    api("api-lr-nan", "train.lr must be a finite number, got nan", lambda: config.from_dict({"train": {"lr": float("nan")}})),
    api("api-missing-dataset", ("mnist files not found", "set data.download: true"),
        lambda: data.load("mnist", root="missing"), error=DatasetNotFoundError),
    api("api-ptq-bits", "evaluate.ptq_bits must be integers in [2, 16], got 17", lambda: metrics.quantize_weights(mlp(), 17)),
    api("api-zero-probes", "evaluate.hessian.probes must be >= 1, got 0",
        lambda: metrics.hessian_trace(mlp(), F.cross_entropy, [(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long))], probes=0)),
    api("api-negative-sigma", "evaluate.weight_noise.sigmas must be >= 0, got -0.1",
        lambda: metrics.weight_noise_accuracy(mlp(), None, sigmas=[-0.1], draws=1)),
    api("api-config-lr-zero", "train.lr must be in (0, 1000], got 0.0", lambda: config.from_dict({"train": {"lr": 0}})),
]


def mistake_of(entry):
    return entry.values[0] if hasattr(entry, "values") else entry


def experiment_bytes(mistake):
    if isinstance(mistake.experiment, bytes):
        return mistake.experiment
    if isinstance(mistake.experiment, str):
        return mistake.experiment.encode()
    raw = {section: (dict(values) if isinstance(values, dict) else values) for section, values in EXPERIMENT.items()}
    for section, values in (mistake.experiment or {}).items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    return yaml.safe_dump(raw).encode()


def run_cli(mistake, folder, capsys):
    """(exit code, stdout, stderr) of `hero-bench` with the mistake's arguments."""
    if mistake.process:
        proc = subprocess.run([sys.executable, "-m", "hero_bench.cli", *mistake.argv], cwd=folder,
                              capture_output=True, text=True, timeout=300)
        return proc.returncode, proc.stdout, proc.stderr
    try:
        code = cli.main(list(mistake.argv))
    except SystemExit as exc:  # argparse rejects the flag itself
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_the_table_covers_enough_distinct_mistakes_each_experiment_mistake_through_both_commands():
    ids = [mistake_of(m).id for m in MISTAKES]
    assert len(ids) == len(set(ids)) >= 250
    through_train = {i.removeprefix("train:") for i in ids if i.startswith("train:")}
    assert all(f"sweep:{i}" in ids for i in through_train)
    failures = (Path(__file__).parents[1] / "docs" / "failures.md").read_text()
    assert f"holds {len(ids)} such cases; {len(through_train)} mistakes in the experiment run through both" in failures


@pytest.mark.timeout(120)  # a hang (a grid or an alias expanded without end) fails here, not at the suite's limit
@pytest.mark.parametrize("mistake", [pytest.param(m, marks=pytest.mark.slow, id=m.id) if isinstance(m, Mistake) and m.process
                                     else m for m in MISTAKES], ids=lambda m: m.id)
def test_a_mistake_is_one_clear_line_a_failure_and_no_files(mistake, tmp_path, monkeypatch, capsys, plugin_sandbox):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.yaml").write_bytes(experiment_bytes(mistake))
    for path, content in mistake.files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(content if isinstance(content, bytes) else content.encode())
    before = tree(tmp_path)
    started = time.monotonic()
    if mistake.call is not None:
        with pytest.raises(mistake.error) as info:
            mistake.call()
        message = str(info.value)
        assert "\n" not in message
    else:
        code, out, err = run_cli(mistake, tmp_path, capsys)
        lines = err.splitlines()[-1:] if mistake.usage or mistake.needs_ray else err.splitlines()
        prefix = f"hero-bench {mistake.argv[0]}: error: " if mistake.usage else "hero-bench: error: "
        assert code == 2 and len(lines) == 1 and lines[0].startswith(prefix) and not out, (code, out, err)
        message = lines[0]
    assert time.monotonic() - started < mistake.within_s + (STARTUP_S if mistake.process else 0)
    for part in mistake.expect:
        assert part in message
    # nothing written: no results/, runs/, ray_results/, wandb/ ... and no code ran
    assert tree(tmp_path) == before
    assert not ray.is_initialized()
