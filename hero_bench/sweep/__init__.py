"""`hero-bench sweep`: one Ray Tune trial per (configuration, seed), locally or on a Ray cluster.

    space      the experiment's sweep.space -> the grid's points and their distributions; each trial's Config
    trainable  the Ray Tune function trainable around hero_bench.train.run_trial, its checkpoints
    cluster    starting or joining Ray, checking its resources
    tracking   W&B runs of the trials (a Ray Tune callback)
    folder     the results folder: what marks it as a sweep's, its lock, --overwrite
    rungs      ASHA over configurations: a configuration's seeds stop together
    study      Optuna search with seeds: one study trial per configuration, told its seeds' mean
    search     what Ray runs: a grid, random or quasirandom draws, or Optuna; tuning budgets
    resume     --resume of any sweep from plain files, without Ray's pickled state
    runner     the Tuner: search, scheduler, loggers, the trials table, interruptions

This package is the only place that knows Ray exists; hero_bench.train does not.

`run` is imported when first asked for: a trial worker imports this package for the trainable
alone, and the runner would add the results' tables, statistics and figures (SciPy, matplotlib,
Optuna) to every worker's start.
"""
__all__ = ["run"]


def __getattr__(name):
    if name == "run":
        from hero_bench.sweep.runner import run
        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
