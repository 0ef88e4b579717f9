"""`hero-bench sweep`: one Ray Tune trial per (configuration, seed), locally or on a Ray cluster.

    space      the experiment's sweep.space -> Ray's param_space; each trial's Config
    trainable  the Ray Tune function trainable around hero_bench.train.run_trial, its checkpoints
    cluster    starting or joining Ray, checking its resources
    tracking   W&B runs of the trials (a Ray Tune callback)
    runner     the Tuner: search, scheduler, loggers, the trials table, the results folder

This package is the only place that knows Ray exists; hero_bench.train does not.
"""
from hero_bench.sweep.runner import run

__all__ = ["run"]
