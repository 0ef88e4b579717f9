"""`hero-bench sweep`: one Ray Tune trial per (configuration, seed), locally or on a Ray cluster.

    space      the experiment's sweep.space -> Ray's param_space; each trial's Config
    trainable  the Ray Tune function trainable around hero_bench.train.run_trial, its checkpoints
    cluster    starting or joining Ray, checking its resources
    tracking   W&B runs of the trials (a Ray Tune callback)
    background the thread that runs W&B's calls, so they never hold up the driver
    folder     the results folder: what marks it as a sweep's, its lock, --overwrite
    resume     --resume of a grid sweep from plain files, without Ray's pickled state
    runner     the Tuner: search, scheduler, loggers, the trials table, interruptions

This package is the only place that knows Ray exists; hero_bench.train does not.
"""
from hero_bench.sweep.runner import run

__all__ = ["run"]
