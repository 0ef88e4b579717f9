"""Every `hero-bench` command that README, `hero-bench --help` and the experiment files' headers suggest
runs, in the order shown, on a fresh clone: one clone per source (README, --help, each experiment
file), since each shows its commands as one sequence (README's quickstart sweep, --help's and the
quickstart file's are each the first on their clone).

Each command runs as written plus a tiny budget: one epoch for `train`; for `sweep`, one epoch, one
seed, one sample and the file's base configuration only (`sweep.space={}`; a search keeps its space and draws
once), since the files' grids are hours of
trials. Left out, and why (`skipped`): commands with a placeholder to fill in (`FILE`, `NAME`, `...`,
`[--set k=v]`), those for a Ray cluster (`--address`) and the CIFAR experiments, whose data is a
download (their commands are checked to parse in tests/test_experiments.py).
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from clone import ROOT, fresh_clone
from commands import header_commands
from hero_bench import cli, experiment_files
from hero_bench import config as config_module

TRAIN_BUDGET = ["--set", "train.epochs=1"]
SWEEP_BUDGET = [*TRAIN_BUDGET, "--set", "sweep.seeds=[0]", "--set", "sweep.space={}", "--set", "sweep.num_samples=1"]
SUBCOMMANDS = ("train", "sweep", "list", "leaderboard", "report")


def skipped(argv):
    """Why a suggested command is not run here, or None."""
    text = " ".join(argv)
    if re.search(r"\b[A-Z][A-Z_]{2,}\b|\.\.\.|\[", text):
        return "a placeholder to fill in"
    if "--address" in argv:
        return "needs a Ray cluster"
    if re.search(r"\bcifar", text):
        return "CIFAR data is a download"
    return None


def command(span):
    """The `hero-bench ...` command in a span of text (from `hero-bench` after its start or a `&&`, to
    a `#` comment), as argv; None for a span that holds none or only names a sub-command
    (`hero-bench report` in prose)."""
    for part in span.split("&&"):
        if part.strip().startswith("hero-bench "):
            argv = shlex.split(part.split(" #")[0])
            if argv[1] in SUBCOMMANDS and (len(argv) > 2 or argv[1] == "list"):
                return argv
    return None


def markdown_commands(text):
    """The commands of a markdown text in order: in its prose's `code spans` and its shell blocks' lines."""
    spans, prose, fence = [], [], None
    for line in [*text.splitlines(), "```"]:
        if line.startswith("```"):
            if fence is None:  # prose ends here: its spans, a span may run over lines
                spans += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", "\n".join(prose))]
                prose = []
            fence = line[3:].strip() if fence is None else None
        elif fence is None:
            prose.append(line)
        elif fence in ("", "bash", "sh"):
            spans.append(line)
    return [argv for argv in map(command, spans) if argv]


def help_commands():
    """The example commands of `hero-bench --help`: each example line up to its description."""
    lines = cli.parser().format_help().splitlines()
    return [command(re.split(r"\s{2,}", line.strip())[0]) for line in lines if line.startswith("  hero-bench ")]


SOURCES = {
    "README": lambda: markdown_commands((ROOT / "README.md").read_text()),
    "--help": help_commands,
    **{f"experiments/{path.name}": lambda path=path: header_commands(path) for path in sorted((ROOT / "experiments").glob("*.yaml"))},
}


def drawn(argv):
    """Whether a suggested sweep searches by drawing (random, quasirandom, optuna), as its file and
    --set say: its space is what it draws from."""
    args = cli.parser().parse_args(argv[1:])
    return config_module.load(experiment_files.resolve(args.file), args.set).sweep.search != "grid"


def run_in_order(commands, clone, env):
    """Run each command in the clone (its own hero_bench: `python -m` puts the clone first on the
    path); returns what each printed."""
    printed = []
    for argv in commands:
        budget = {"train": TRAIN_BUDGET, "sweep": SWEEP_BUDGET}.get(argv[1], [])
        if argv[1] == "sweep" and drawn(argv):  # a search draws from the file's space: keep it, draw once
            budget = [*TRAIN_BUDGET, "--set", "sweep.seeds=[0]", "--set", "sweep.num_samples=1"]
        done = subprocess.run([sys.executable, "-m", "hero_bench.cli", *argv[1:], *budget], cwd=clone, env=env,
                              capture_output=True, text=True, timeout=600)
        output = done.stdout + done.stderr
        assert done.returncode == 0 and "Traceback" not in output, f"{shlex.join(argv)} failed:\n{output[-4000:]}"
        printed.append(output)
    return printed


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES)
def test_every_suggested_command_runs_in_order_on_a_fresh_clone(source, tmp_path):
    suggested = SOURCES[source]()
    assert suggested, f"{source} suggests no hero-bench command"
    # a command shown twice is one suggestion (README's quickstart sweep: the first line, and for a wheel)
    commands = [argv for i, argv in enumerate(suggested) if skipped(argv) is None and argv not in suggested[:i]]
    if "cifar" in source:  # a GPU cluster's sweep: tests/test_experiments.py checks that it parses
        assert not commands and {skipped(argv) for argv in suggested} <= {"a placeholder to fill in", "needs a Ray cluster"}
        return
    assert commands, suggested
    clone = fresh_clone(tmp_path / "clone")
    # no W&B account: `report` writes report.md; the data cache is the test's own
    env = {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WANDB_API_KEY")},
           "WANDB_MODE": "offline", "NETRC": str(tmp_path / "no-netrc"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    printed = run_in_order(commands, clone, env)
    shipped = {p.name for p in (ROOT / "results").iterdir() if p.is_dir()}
    first_sweeps = {}
    for argv, output in zip(commands, printed):
        if argv[1] == "sweep":
            first_sweeps.setdefault(Path(argv[2]).stem, output)
    for name, output in first_sweeps.items():
        results = clone / "results" / name
        assert (results / "trials.csv").is_file() and (results / "sweep.json").is_file()
        # the first sweep of an experiment whose run the repository ships replaces it, and says so
        replaced = f"replaced {results.resolve()}, the run the repository ships: `git checkout -- {results.resolve()}` brings it back"
        assert (replaced in output.splitlines()) == (name in shipped), output[-3000:]
    trains = [argv for argv in commands if argv[1] == "train"]
    for name in {Path(argv[2]).stem for argv in trains}:
        runs = sorted(int(p.name) for p in (clone / "runs" / name).iterdir())
        assert runs == list(range(1, 1 + sum(Path(argv[2]).stem == name for argv in trains)))  # a folder per run
