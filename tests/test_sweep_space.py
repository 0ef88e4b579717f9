"""Search-space construction (no Ray cluster needed)."""
import pytest

from hero_bench import config as config_module
from hero_bench import trials
from hero_bench.sweep import space as sweep
from hero_bench.errors import ConfigError


def make(space, **sweep_section):
    return config_module.from_dict({"name": "t", "optimizer": {"name": "hero"}, "sweep": {"space": space, "seeds": [0, 1], **sweep_section}})


def test_a_list_of_grids_runs_their_union_without_duplicates():
    space = sweep.search_space(make([
        {"optimizer.name": ["sgd"]},
        {"optimizer.radius": [0.5, 1.0], "optimizer.hessian_coef": [0.0, 10.0]},
        {"optimizer.name": "sgd"},  # the same point again: dropped
    ]))
    assert space["point"] == {"grid_search": [
        {"optimizer.name": "sgd"},
        {"optimizer.radius": 0.5, "optimizer.hessian_coef": 0.0}, {"optimizer.radius": 0.5, "optimizer.hessian_coef": 10.0},
        {"optimizer.radius": 1.0, "optimizer.hessian_coef": 0.0}, {"optimizer.radius": 1.0, "optimizer.hessian_coef": 10.0},
    ]}
    assert space["train.seed"] == {"grid_search": [0, 1]}


def test_a_union_point_becomes_the_trials_config_and_row():
    config = make([{"optimizer.name": ["gradnorm"], "optimizer.hessian_coef": [0.1]}])
    params = {"point": {"optimizer.name": "gradnorm", "optimizer.hessian_coef": 0.1}, "train.seed": 1}
    trial = config_module.for_trial(config, sweep.trial_params(params))
    assert (trial.optimizer.name, trial.optimizer.hessian_coef, trial.train.seed) == ("gradnorm", 0.1, 1)
    row = trials.row("id", trial, sweep.trial_params(params), {"epoch": trial.train.epochs, "test_acc": 90.0}, None)
    assert row["optimizer.name"] == "gradnorm" and row["status"] == "completed" and "point" not in row


@pytest.mark.parametrize("space, extra, message", [
    ([{"optimizer.radius": [-0.5]}], {}, r"sweep.space\[0\].optimizer.radius: optimizer.radius must be in \[0, inf\)"),
    ([{}], {}, r"sweep.space\[0\] is empty"),
    ([{"optimizer.radius": []}], {}, r"sweep.space\[0\].optimizer.radius is an empty list"),
    ([{"optimizer.radius": [0.5], "train.lr": {"dist": "loguniform", "low": 0.01, "high": 0.1}}], {},
     r"sweep.space\[0\].train.lr: a distribution is drawn by sweep.search random, quasirandom or optuna"),
])
def test_bad_union_grids_name_the_grid_and_key(space, extra, message):
    with pytest.raises(ConfigError, match=message):
        sweep.search_space(make(space, **extra))
