"""`hero-bench sweep --address`: a sweep joins a real two-node Ray cluster started with `ray start`
on loopback, ships the experiment's plugin to its trials, runs them on both nodes, and leaves the
cluster (which the test then stops) as it found it."""
import contextlib
import os
import subprocess
import sys

import ray  # noqa: F401 - first: Ray puts the psutil it bundles on sys.path
import pandas as pd
import psutil
import pytest
import yaml

from lab_plugins import lab_parameters, write
from processes import descendants, hero_bench_process, loopback_cluster, wait_for
from tiny import experiment

pytestmark = pytest.mark.slow

# the model and the metric come from the plugin lab_plugin (tests/lab_plugins.py), next to the file
EXPERIMENT = experiment(
    name="cluster", plugins=["lab_plugin"], model={"name": "lab_net", "args": {"width": 5}},
    data={"args": {"num_samples": 1024, "input_shape": [1, 4, 4], "num_classes": 3}},
    train={"epochs": 2, "batch_size": 16}, sweep={"space": {"train.lr": [0.03, 0.05]}, "seeds": [0, 1]},
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


def test_a_sweep_joins_a_two_node_cluster_ships_its_plugin_and_runs_trials_on_both_nodes(tmp_path, monkeypatch):
    """The plugin lies in lab/ beside the experiment file; the driver runs in the folder above, and
    no node's Python can import the plugin by itself. Each import of it is logged with its pid and
    file ($LAB_PLUGIN_IMPORTS), so the test sees that every trial imported the copy Ray shipped."""
    plugin = write(tmp_path / "lab", "lab_plugin").resolve()
    (tmp_path / "lab" / "exp.yaml").write_text(yaml.safe_dump(EXPERIMENT))
    imports = tmp_path / "imports.txt"
    monkeypatch.setenv("LAB_PLUGIN_IMPORTS", str(imports))
    with loopback_cluster(nodes=2, cpus_per_node=1) as (address, env):
        alone = subprocess.run([sys.executable, "-c", "import lab_plugin"], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert "No module named 'lab_plugin'" in alone.stderr, "the nodes' Python cannot import the plugin by itself"
        nodes = raylets(address)
        assert len(nodes) == 2, "ray start started two nodes"
        busy = {raylet.pid: set() for raylet in nodes}

        def watch():
            for raylet in nodes:
                busy[raylet.pid] |= trial_actors(raylet)

        args = ["sweep", "lab/exp.yaml", "--address", address, "--storage", "ray"]
        with hero_bench_process(args, tmp_path, env) as (proc, _, _):
            assert wait_for(lambda: proc.poll() is not None, proc, watch, timeout=300)
        log = (tmp_path / "hero-bench-0.log").read_text()
        assert proc.returncode == 0, log[-3000:]
        assert f"joined the Ray cluster at {address}: 2 nodes, 2 CPUs, 0 GPUs" in log
        assert all(busy.values()), f"each node ran trials: {busy}"
        assert all(alive(raylet) for raylet in nodes), "the sweep leaves the cluster running"
    trials = pd.read_csv(tmp_path / "results" / "cluster" / "trials.csv")
    assert sorted(zip(trials["train.lr"], trials["train.seed"])) == [(0.03, 0), (0.03, 1), (0.05, 0), (0.05, 1)]
    assert set(trials["status"]) == {"completed"} and set(trials["epochs_done"]) == {2}
    assert set(trials["lab_parameters"]) == {lab_parameters((1, 4, 4), 3, width=5)}  # the plugin's model, by its metric
    imported = dict(line.split(" ", 1) for line in imports.read_text().splitlines())
    assert imported.pop(str(proc.pid)) == str(plugin), "the driver imported the file next to the experiment"
    actors = {str(pid) for pids in busy.values() for pid in pids}
    assert actors <= set(imported), "every trial's process imported the plugin"
    shipped = set(imported.values())
    assert all("runtime_resources" in path and path.endswith("/lab_plugin.py") for path in shipped), shipped
    assert not any(alive(raylet) for raylet in nodes), "the test stopped the cluster it started"


@pytest.mark.slow
def test_a_sweeps_own_ray_runs_its_workers_at_the_drivers_priority(monkeypatch):
    """Ray starts its workers at nice 15 unless told otherwise; a sweep's own Ray runs them at 0, so
    that other work on the machine does not starve the trials."""
    import ray

    from hero_bench.sweep import cluster

    monkeypatch.delenv("RAY_worker_niceness", raising=False)

    @ray.remote
    def niceness():
        return os.nice(0)

    with cluster.ray_running(None):
        assert ray.get(niceness.remote()) == os.nice(0)
    assert not ray.is_initialized()
