import contextlib

import pytest
import torch

# Tiny models run fastest on one thread, and CI has two cores shared with Ray workers: several
# threads spin-wait on a busy machine.
torch.set_num_threads(1)


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
