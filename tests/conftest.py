import contextlib

import pytest
import torch

# Tiny models run fastest on one thread, and CI has two cores shared with Ray workers: several
# threads spin-wait on a busy machine.
torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """Tests that start Ray or W&B's service process are `slow`, like those marked so by hand (that
    start subprocesses or a cluster): `pytest -m "not slow"` is the quick loop, plain `pytest` runs all."""
    for item in items:
        if {"local_ray", "fresh_wandb"} & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for one test module, shut down even when a test fails."""
    import ray  # only the sweep tests need Ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def fresh_wandb():
    """The W&B test gets its own wandb service, started with the test's environment, and a service
    the test broke is not left to later tests."""
    import wandb

    wandb.teardown()
    yield
    with contextlib.suppress(Exception):  # the service may be dead: that is what the test did
        wandb.teardown()
