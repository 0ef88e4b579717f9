"""The `hero-bench` command. Sub-commands import what they need lazily, so `train` and `list`
never load Ray, and `train` loads W&B only when it logs to it. Every sub-command imports the installed
plugins and those given by `--plugin` (hero_bench.plugins) before it reads a name."""
import argparse
import contextlib
import json
import sys
import warnings
from pathlib import Path

import yaml

from hero_bench import experiment_files
from hero_bench.errors import HeroBenchError, HeroBenchWarning, Interrupted

KINDS = ("datasets", "models", "methods", "metrics", "experiments")

EPILOG = """examples:
  hero-bench sweep quickstart                           run the shipped quickstart sweep with Ray Tune
  hero-bench train quickstart --set optimizer.name=sgd  train one configuration; its files go to runs/quickstart/N
  hero-bench train quickstart optimizer.radius=0.1 train.epochs=5 --wandb offline
  hero-bench list experiments                           the shipped experiments (a path to any YAML file works too)
  hero-bench list --plugin MODULE                       what a plugin of your own registers (docs/extending.md)
  hero-bench leaderboard results/quickstart             rebuild tables and figures
  hero-bench report results/quickstart --entity me --project hero-bench
"""


def registries():
    from hero_bench import data, methods, metrics, models

    return {"datasets": data.DATASETS, "models": models.MODELS, "methods": methods.METHODS, "metrics": metrics.METRICS}


def load_plugins(args):
    """The plugins of a command without an experiment file: installed ones, and --plugin's, found in
    the current folder or on Python's path."""
    from hero_bench import plugins

    plugins.load(args.plugin, folders=[Path.cwd()])


def cmd_list(args):
    """Each registry's names; a name a plugin registered is followed by its origin in brackets."""
    from hero_bench.registry import BUILT_IN

    found = registries()
    load_plugins(args)
    for kind, registry in found.items():
        if args.kind in (None, kind):
            names = [name if registry.origin(name) == BUILT_IN else f"{name} [{registry.origin(name)}]"
                     for name in registry.names(args.pattern)]
            print(f"{kind}: {', '.join(names)}")
    if args.kind in (None, "experiments"):
        print(f"experiments: {', '.join(experiment_files.names(args.pattern))} (files in {experiment_files.folder()})")


def format_table(result):
    rows = [(k, f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in result.items() if k != "error"]
    # long text (hessian_density's JSON) is shortened here; metrics.json keeps it whole
    rows = [(k, v if len(v) <= 60 else f"{v[:50]}... ({len(v)} characters)") for k, v in rows]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def new_run_folder(parent):
    """A new folder parent/N, N one past the highest number there (1 at first): each run gets its own,
    also when two runs end at once (mkdir is the claim)."""
    parent.mkdir(parents=True, exist_ok=True)
    number = max((int(p.name) for p in parent.iterdir() if p.name.isdecimal()), default=0) + 1
    while True:
        try:
            (parent / str(number)).mkdir()
            return parent / str(number)
        except FileExistsError:
            number += 1


def cmd_train(args):
    from hero_bench import config as config_module, tracking, trials
    from hero_bench.atomic import write_atomic
    from hero_bench.train import run_trial

    config = config_module.load(experiment_files.resolve(args.file), [*args.set, *args.overrides], args.plugin)
    out = Path(args.out) if args.out else None
    if out is None and tracking.agent_run_id():  # a W&B agent runs this command once per run of its sweep: a folder each
        out = Path("runs") / config.name / tracking.agent_run_id()
    if out is not None and (out / "metrics.json").exists() and not args.overwrite:
        raise HeroBenchError(f"{out} already holds a trained run; pass --overwrite to replace it, another --out, or no --out for a new runs/{config.name}/N")
    mode = tracking.train_mode(args.wandb)
    if out is None and mode != "disabled":  # W&B writes its run into the folder while the model trains
        out = new_run_folder(Path("runs") / config.name)
    run = tracking.TrainRun(config, mode, out.resolve() / "wandb" if out is not None else None)
    result = run_trial(config, report=run.report, progress=not args.quiet)
    where = run.finish(result)
    print(format_table(result))
    if out is None:
        out = new_run_folder(Path("runs") / config.name)
    out.mkdir(parents=True, exist_ok=True)
    # what ran: every default as used, the method's radius and hessian_coef resolved, no sweep section
    write_atomic(out / "config.yaml", yaml.safe_dump(trials.ran(config), sort_keys=False))
    write_atomic(out / "metrics.json", json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'metrics.json'} and {out / 'config.yaml'}")
    if where:
        print(where)
    return 0 if result["status"] == "completed" else 1


def cmd_sweep(args):
    """Run the sweep, write its leaderboard and figures, then the W&B summary run; end with a summary."""
    from hero_bench import config as config_module

    overrides = list(args.set)
    if args.max_concurrent is not None:
        overrides.append(f"sweep.max_concurrent_trials={args.max_concurrent}")
    if args.wandb is not None:
        overrides.append(f"tracking.wandb={args.wandb}")
    config = config_module.load(experiment_files.resolve(args.file), overrides, args.plugin)  # first: a mistake in the file costs no Ray import

    from hero_bench import sweep, trials
    from hero_bench.results import outputs
    from hero_bench.sweep import tracking
    from hero_bench.sweep.space import TrialConfigs

    results_dir = Path(args.results) / config.name
    configs = TrialConfigs(config)
    trackers = tracking.callbacks(config, results_dir.resolve(), configs)
    frame = sweep.run(config, results_root=args.results, address=args.address, storage=args.storage,
                      resume=args.resume, overwrite=args.overwrite, configs=configs, callbacks=trackers,
                      verbose=args.verbose)  # Ray is shut down when it returns
    _, skipped = outputs.write(results_dir)
    for tracker in trackers:
        tracker.finish_sweep(results_dir)
    if skipped:
        print(f"figures not drawn: {'; '.join(skipped)}")
    print(outputs.summary(results_dir))
    for tracker in trackers:
        print(tracker.where())
    return 0 if len(frame) and (frame[trials.STATUS] != "failed").all() else 1


def cmd_leaderboard(args):
    load_plugins(args)  # first: a bad plugin costs no import of the results side
    from hero_bench.results import outputs

    written, skipped = outputs.write(args.path)
    for path in written:
        print(f"wrote {path}")
    for note in skipped:
        print(f"figure not drawn: {note}")


def cmd_report(args):
    load_plugins(args)
    from hero_bench.results import report

    report.publish(args.path, entity=args.entity, project=args.project)


def parser():
    p = argparse.ArgumentParser(
        prog="hero-bench",
        description="Benchmark HERO (Hessian-Enhanced Robust Optimization) against SGD, SAM and a "
        "gradient-norm penalty: single trials, Ray Tune sweeps, leaderboards and W&B reports.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_plugins(sp):
        sp.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import this module of your own first: the datasets, models, methods and metrics it registers "
                        "become valid names (repeatable; found in the current folder or on Python's path; docs/extending.md)")

    def with_overrides(sp):
        sp.add_argument("file", help="a shipped experiment's name (hero-bench list experiments) or an experiment YAML file")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set optimizer.radius=0.5 (repeatable; values parsed as YAML)")
        with_plugins(sp)

    sp = sub.add_parser("train", help="train one configuration and print its metrics",
                        description="Train a single trial of an experiment file (its sweep section is ignored). "
                        "KEY=VALUE arguments after the file override keys as --set does, so the command can be the "
                        "program of a W&B Sweep: command: [hero-bench, train, FILE, ${args_no_hyphens}].")
    with_overrides(sp)
    sp.add_argument("overrides", nargs="*", type=override, metavar="KEY=VALUE",
                    help="override config keys as --set does, e.g. optimizer.radius=0.5 train.epochs=5")
    sp.add_argument("--out", help="folder for metrics.json and config.yaml (default: a new runs/<name>/N for each run; "
                    "runs/<name>/<run id> under `wandb agent`)")
    sp.add_argument("--wandb", choices=("offline", "online", "disabled"),
                    help="log the run to W&B (runs under the --out folder); default: disabled, or under `wandb agent` "
                    "W&B's own mode (WANDB_MODE, online unless set) so the agent's sweep gets the run")
    sp.add_argument("--quiet", action="store_true", help="no progress (a bar on a terminal, else a line per epoch)")
    sp.add_argument("--overwrite", action="store_true", help="replace an earlier run in the --out folder")
    sp.set_defaults(func=cmd_train, parser=sp)

    sp = sub.add_parser("sweep", help="run every (configuration, seed) trial with Ray Tune",
                        description="Run an experiment's sweep with Ray Tune; results go to results/<name>/.")
    with_overrides(sp)
    sp.add_argument("--address", help="Ray cluster to join: 'auto' or ray://host:10001 (default: start a local Ray)")
    sp.add_argument("--storage", help="where Ray keeps run folders and checkpoints: a path or a URI such as s3://bucket/x (default: ray_results/)")
    sp.add_argument("--results", default="results", help="parent folder of results/<name>/ (default: results)")
    group = sp.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue an interrupted sweep; finished trials are not rerun")
    group.add_argument("--overwrite", action="store_true", help="replace the results of an earlier sweep with the same name")
    sp.add_argument("--max-concurrent", type=int, metavar="N", help="override sweep.max_concurrent_trials")
    sp.add_argument("--wandb", choices=("offline", "online", "disabled"), help="override tracking.wandb")
    sp.add_argument("--verbose", action="store_true", help="Ray's own output (status tables, every result, "
                    "its workers' log lines) instead of hero-bench's header and progress line")
    sp.set_defaults(func=cmd_sweep)

    sp = sub.add_parser("leaderboard", help="rebuild leaderboards and figures from trials.csv",
                        description="Rebuild leaderboard.{md,csv,html} and figures/ from a results folder or a trials.csv.")
    sp.add_argument("path", help="results/<name> or a trials.csv")
    with_plugins(sp)
    sp.set_defaults(func=cmd_leaderboard)

    sp = sub.add_parser("report", help="build a W&B report (or report.md when offline)",
                        description="Build a W&B report of a finished sweep; saved online with credentials, else written as report.md.")
    sp.add_argument("path", help="results/<name>")
    sp.add_argument("--entity", help="W&B entity (user or team)")
    sp.add_argument("--project", default="hero-bench", help="W&B project (default: hero-bench)")
    with_plugins(sp)
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("list", help="list registered datasets, models, methods and metrics, and the shipped experiments")
    sp.add_argument("kind", nargs="?", choices=KINDS, help="only this kind")
    sp.add_argument("--pattern", default="*", help="shell-style filter, e.g. 'resnet*'")
    with_plugins(sp)
    sp.set_defaults(func=cmd_list)
    return p


def override(text):
    """A KEY=VALUE argument of `train` (its value is parsed with the config)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. optimizer.radius=0.5), got {text!r:.80}")
    return text


def parse(argv=None):
    """The command line's arguments. `train`'s KEY=VALUE overrides may also come after its options:
    argparse takes a positional list in one piece, unless the command's parser reads them intermixed."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    args, extra = p.parse_known_args(argv)
    if extra and args.command == "train":
        return args.parser.parse_intermixed_args(argv[argv.index("train") + 1:])
    if extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv=None):
    args = parse(argv)
    try:
        with one_line_warnings():
            return args.func(args) or 0
    except HeroBenchError as exc:
        print(f"hero-bench: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"hero-bench: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("hero-bench: interrupted", file=sys.stderr)
        return 130


@contextlib.contextmanager
def one_line_warnings():
    """hero-bench's own warnings print as one line, `hero-bench: warning: ...`."""
    default = warnings.formatwarning

    def format_warning(message, category, filename, lineno, line=None):
        if issubclass(category, HeroBenchWarning):
            return f"hero-bench: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning
    try:
        yield
    finally:
        warnings.formatwarning = default


if __name__ == "__main__":
    sys.exit(main())
