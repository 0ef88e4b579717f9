"""`hero-bench sweep --address`: a sweep joins a real two-node Ray cluster started with `ray start`
on loopback, runs its trials on both nodes, and leaves the cluster (which the test then stops) as
it found it."""
import contextlib

import ray  # noqa: F401 - first: Ray puts the psutil it bundles on sys.path
import pandas as pd
import psutil
import pytest
import yaml

from processes import descendants, hero_bench_process, loopback_cluster, wait_for
from tiny import experiment

pytestmark = pytest.mark.slow

EXPERIMENT = experiment(
    name="cluster", data={"args": {"num_samples": 1024, "input_shape": [1, 4, 4], "num_classes": 3}},
    train={"epochs": 3, "batch_size": 16}, sweep={"space": {"train.lr": [0.03, 0.05]}, "seeds": [0, 1]},
)


def trial_actors(raylet):
    """Pids of the Ray workers a raylet started that run a trial (Ray names them ray::ImplicitFunc,
    which the kernel cuts to 15 characters), not its pool of idle workers."""
    pids = set()
    for child in descendants(raylet):
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.name().startswith("ray::ImplicitFu"):
                pids.add(child.pid)
    return pids


def raylets(address):
    """The raylet of each node of the cluster whose head (GCS) listens on `address`'s port."""
    port = address.rsplit(":", 1)[1]
    return [p for p in psutil.process_iter(["name", "cmdline"]) if p.info["name"] == "raylet"
            and any(a.startswith("--gcs-address=") and a.endswith(f":{port}") for a in p.info["cmdline"] or [])]


def alive(process):
    with contextlib.suppress(psutil.NoSuchProcess):
        return process.status() != psutil.STATUS_ZOMBIE
    return False


def test_a_sweep_joins_a_two_node_cluster_and_runs_trials_on_both_nodes(tmp_path):
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(EXPERIMENT))
    with loopback_cluster(nodes=2, cpus_per_node=1) as (address, env):
        nodes = raylets(address)
        assert len(nodes) == 2, "ray start started two nodes"
        busy = {raylet.pid: set() for raylet in nodes}

        def watch():
            for raylet in nodes:
                busy[raylet.pid] |= trial_actors(raylet)

        args = ["sweep", "exp.yaml", "--address", address, "--storage", "ray"]
        with hero_bench_process(args, tmp_path, env) as (proc, _, _):
            assert wait_for(lambda: proc.poll() is not None, proc, watch, timeout=300)
        log = (tmp_path / "hero-bench-0.log").read_text()
        assert proc.returncode == 0, log[-3000:]
        assert f"joined the Ray cluster at {address}: 2 nodes, 2 CPUs, 0 GPUs" in log
        assert all(busy.values()), f"each node ran trials: {busy}"
        assert all(alive(raylet) for raylet in nodes), "the sweep leaves the cluster running"
    trials = pd.read_csv(tmp_path / "results" / "cluster" / "trials.csv")
    assert sorted(zip(trials["train.lr"], trials["train.seed"])) == [(0.03, 0), (0.03, 1), (0.05, 0), (0.05, 1)]
    assert set(trials["status"]) == {"completed"} and set(trials["epochs_done"]) == {3}
    assert not any(alive(raylet) for raylet in nodes), "the test stopped the cluster it started"
