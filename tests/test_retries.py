"""A trial that fails is retried from its checkpoint. The fault is injected through the environment
(HERO_BENCH_FAIL_AT_EPOCH, never part of an experiment), which Ray's workers get from the Ray this
module starts."""
import pytest
import ray

from hero_bench import config as config_module
from hero_bench import sweep
from hero_bench.train import FAIL_AT_EPOCH
from test_sweep import TINY


@pytest.fixture(scope="module")
def ray_that_fails_at_epoch_2():
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False,
             runtime_env={"env_vars": {FAIL_AT_EPOCH: "2"}})
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_that_fails_at_epoch_2")
def test_a_failing_trial_is_retried_from_its_checkpoint(tmp_path):
    raw = {**TINY, "train": {**TINY["train"], "epochs": 3}}
    raw["sweep"] = {"space": {}, "seeds": [0], "max_failures": 1, "checkpoint_every": 1}
    frame = sweep.run(config_module.from_dict(raw), results_root=tmp_path / "r", storage=str(tmp_path / "ray"))
    row = frame.iloc[0]
    # a restart from scratch would hit the fault again and fail; a resume continues after epoch 1
    assert row["status"] == "completed" and row["epochs_done"] == 3 and row["resumed_from_epoch"] == 1
