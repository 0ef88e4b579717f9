import pytest
import torch

# Tiny models run fastest on one thread, and CI has two cores shared with Ray workers: several
# threads spin-wait on a busy machine.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for one test module, shut down even when a test fails."""
    import ray  # only the sweep tests need Ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()
