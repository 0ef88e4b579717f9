"""The `hero-bench` command. Sub-commands import what they need lazily, so `train` and `list`
never load Ray or W&B."""
import argparse
import contextlib
import json
import sys
import warnings
from pathlib import Path

import yaml

from hero_bench.errors import HeroBenchError, HeroBenchWarning, Interrupted

KINDS = ("datasets", "models", "methods", "metrics")

EPILOG = """examples:
  hero-bench sweep experiments/quickstart.yaml          run the quickstart sweep with Ray Tune
  hero-bench train experiments/quickstart.yaml --set optimizer.name=hero --set optimizer.hessian_coef=100
  hero-bench list models
  hero-bench leaderboard results/quickstart             rebuild tables and figures
  hero-bench report results/quickstart --entity me --project hero-bench
"""


def registries():
    from hero_bench import data, methods, metrics, models

    return {"datasets": data.DATASETS, "models": models.MODELS, "methods": methods.METHODS, "metrics": metrics.METRICS}


def cmd_list(args):
    for kind, registry in registries().items():
        if args.kind in (None, kind):
            print(f"{kind}: {', '.join(registry.names(args.pattern))}")


def format_table(result):
    rows = [(k, f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in result.items() if k != "error"]
    # long text (hessian_density's JSON) is shortened here; metrics.json keeps it whole
    rows = [(k, v if len(v) <= 60 else f"{v[:50]}... ({len(v)} characters)") for k, v in rows]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def cmd_train(args):
    from hero_bench import config as config_module
    from hero_bench.atomic import write_atomic
    from hero_bench.train import run_trial

    config = config_module.load(args.file, args.set)
    out = Path(args.out or Path("runs") / config.name)
    if (out / "metrics.json").exists() and not args.overwrite:
        raise HeroBenchError(f"{out} already holds a trained run; pass --overwrite to replace it or --out to write elsewhere")
    result = run_trial(config, progress=not args.quiet)
    print(format_table(result))
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    write_atomic(out / "metrics.json", json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'metrics.json'} and {out / 'config.yaml'}")
    return 0 if result["status"] == "completed" else 1


def cmd_sweep(args):
    """Run the sweep, write its leaderboard and figures, then the W&B summary run; end with a summary."""
    from hero_bench import config as config_module

    overrides = list(args.set)
    if args.max_concurrent is not None:
        overrides.append(f"sweep.max_concurrent_trials={args.max_concurrent}")
    if args.wandb is not None:
        overrides.append(f"tracking.wandb={args.wandb}")
    config = config_module.load(args.file, overrides)  # first: a mistake in the file costs no Ray import

    import ray

    from hero_bench import sweep, trials
    from hero_bench.results import outputs
    from hero_bench.sweep import tracking
    from hero_bench.sweep.space import TrialConfigs

    results_dir = Path(args.results) / config.name
    configs = TrialConfigs(config)
    trackers = tracking.callbacks(config, results_dir.resolve(), configs)
    owns_ray = not ray.is_initialized()  # a Ray the caller started is the caller's to shut down
    try:
        frame = sweep.run(config, results_root=args.results, address=args.address, storage=args.storage,
                          resume=args.resume, overwrite=args.overwrite, trust_storage=args.trust_storage,
                          configs=configs, callbacks=trackers, verbose=args.verbose)
        _, skipped = outputs.write(results_dir)
        for tracker in trackers:
            tracker.finish_sweep(results_dir)
    finally:
        if owns_ray and ray.is_initialized():
            ray.shutdown()
    if skipped:
        print(f"figures skipped for lack of data: {'; '.join(skipped)}")
    print(outputs.summary(results_dir))
    for tracker in trackers:
        tracker.wait()  # the W&B summary run, made while Ray shut down and the summary was printed
        print(tracker.where())
    return 0 if len(frame) and (frame[trials.STATUS] != "failed").all() else 1


def cmd_leaderboard(args):
    from hero_bench.results import outputs

    written, skipped = outputs.write(args.path)
    for path in written:
        print(f"wrote {path}")
    for note in skipped:
        print(f"figure skipped: {note}")


def cmd_report(args):
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

    def with_overrides(sp):
        sp.add_argument("file", help="experiment YAML file (see experiments/)")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set optimizer.radius=0.5 (repeatable; values parsed as YAML)")

    sp = sub.add_parser("train", help="train one configuration and print its metrics",
                        description="Train a single trial of an experiment file (its sweep section is ignored).")
    with_overrides(sp)
    sp.add_argument("--out", help="folder for metrics.json and config.yaml (default: runs/<name>)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.add_argument("--overwrite", action="store_true", help="replace an earlier run in the same folder")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("sweep", help="run every (configuration, seed) trial with Ray Tune",
                        description="Run an experiment's sweep with Ray Tune; results go to results/<name>/.")
    with_overrides(sp)
    sp.add_argument("--address", help="Ray cluster to join: 'auto' or ray://host:10001 (default: start a local Ray)")
    sp.add_argument("--storage", help="where Ray keeps run folders and checkpoints: a path or a URI such as s3://bucket/x (default: ray_results/)")
    sp.add_argument("--results", default="results", help="parent folder of results/<name>/ (default: results)")
    group = sp.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue an interrupted sweep; finished trials are not rerun")
    group.add_argument("--overwrite", action="store_true", help="replace the results of an earlier sweep with the same name")
    sp.add_argument("--trust-storage", action="store_true",
                    help="with --resume of a sweep with random draws (random or optuna search, distributions): read Ray's "
                    "pickled experiment state from the storage, which can run code; only for storage you trust like any pickle")
    sp.add_argument("--max-concurrent", type=int, metavar="N", help="override sweep.max_concurrent_trials")
    sp.add_argument("--wandb", choices=("offline", "online", "disabled"), help="override tracking.wandb")
    sp.add_argument("--verbose", action="store_true", help="Ray's own output (status tables, every result, "
                    "its workers' log lines) instead of hero-bench's header and progress line")
    sp.set_defaults(func=cmd_sweep)

    sp = sub.add_parser("leaderboard", help="rebuild leaderboards and figures from trials.csv",
                        description="Rebuild leaderboard.{md,csv,html} and figures/ from a results folder or a trials.csv.")
    sp.add_argument("path", help="results/<name> or a trials.csv")
    sp.set_defaults(func=cmd_leaderboard)

    sp = sub.add_parser("report", help="build a W&B report (or report.md when offline)",
                        description="Build a W&B report of a finished sweep; saved online with credentials, else written as report.md.")
    sp.add_argument("path", help="results/<name>")
    sp.add_argument("--entity", help="W&B entity (user or team)")
    sp.add_argument("--project", default="hero-bench", help="W&B project (default: hero-bench)")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("list", help="list registered datasets, models, methods and metrics")
    sp.add_argument("kind", nargs="?", choices=KINDS, help="only this registry")
    sp.add_argument("--pattern", default="*", help="shell-style filter, e.g. 'resnet*'")
    sp.set_defaults(func=cmd_list)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
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
