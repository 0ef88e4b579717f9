import contextlib
import sys

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


@pytest.fixture
def plugin_sandbox(monkeypatch):
    """What plugins a test imports is forgotten after it: the registries (names and origins), the
    metric catalog, the model argument checks, the record of imported plugins and of warned metric
    keys are copies, and the plugin modules leave sys.modules, so the next test imports them afresh."""
    from hero_bench import catalog, data, methods, metrics, models, plugins

    for registry in (data.DATASETS, models.MODELS, methods.METHODS, metrics.METRICS):
        monkeypatch.setattr(registry, "_factories", dict(registry._factories))
        monkeypatch.setattr(registry, "_origins", dict(registry._origins))
    monkeypatch.setattr(catalog, "CATALOG", list(catalog.CATALOG))
    monkeypatch.setattr(models, "ARG_CHECKS", dict(models.ARG_CHECKS))
    monkeypatch.setattr(metrics, "_UNDECLARED_WARNED", set())
    monkeypatch.setattr(plugins, "_loaded", set())
    yield
    tops = {name.split(".")[0] for name in plugins._loaded - {plugins.GROUP}}
    for name in [m for m in sys.modules if m.split(".")[0] in tops]:
        del sys.modules[name]
