"""Processes the tests start (`hero-bench` drivers, `ray start` nodes) and stop again, by pid.

Nothing here stops a process it did not start: a driver's processes are its descendants, and a
loopback cluster's are the ones whose command line names the cluster's own temp folder (plus their
descendants), a folder no other Ray on the machine uses.
"""
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray  # noqa: F401 - first: Ray puts the psutil it bundles on sys.path
import psutil


# the `ray` command of the Ray this interpreter imports, whatever PATH says
RAY = str(Path(sys.executable).with_name("ray"))


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on (it was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(process):
    try:
        return process.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_all(processes, grace=0.0):
    """Stop these processes: SIGTERM and `grace` seconds to exit, then SIGKILL (psutil checks each
    one's identity, so a reused pid is never hit)."""
    processes = list(processes)
    if grace:
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.terminate()
        processes = psutil.wait_procs(processes, timeout=grace)[1]
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(processes, timeout=15)


@contextlib.contextmanager
def hero_bench_process(args, cwd, env=None, **popen):
    """`hero-bench ARGS` as a real process (`popen`: more subprocess.Popen arguments, e.g.
    start_new_session=True to give it a process group of its own that a test can Ctrl-C). `tree`
    collects the processes it starts (its local Ray); on exit the process and every one of them are gone."""
    log = open(Path(cwd) / f"hero-bench-{len(list(Path(cwd).glob('hero-bench-*.log')))}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "hero_bench.cli", *args], cwd=cwd, env=env, stdout=log,
                            stderr=subprocess.STDOUT, **popen)
    driver, tree = psutil.Process(proc.pid), {}

    def collect():
        tree.update({p.pid: p for p in descendants(driver)})

    try:
        yield proc, collect, tree
    finally:
        collect()
        kill_all([driver, *tree.values()])
        proc.wait()
        log.close()


def wait_for(condition, proc, collect, timeout):
    """Poll `condition()` while the process runs, collecting the processes it starts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        collect()
        if condition():
            return True
        if proc.poll() is not None:
            return condition()
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def loopback_cluster(nodes, cpus_per_node, gpus_per_node=0):
    """A Ray cluster of `nodes` nodes on 127.0.0.1, each started by `ray start` (the head with
    --head, the others with --address) as a user would. Yields (address, env): the environment
    under which drivers may join it.

    `gpus_per_node`: the GPUs each node declares (`--num-gpus`). Ray schedules, packs and assigns
    declared GPUs (ids, CUDA_VISIBLE_DEVICES) whether or not the hardware is there, so a machine
    without one can play a GPU cluster; only CUDA itself is missing.

    The cluster keeps to its own temp folder (Ray writes the address file that `ray.init()` looks
    for in there, so no other Ray on this machine finds it) and its own token (token auth, Ray's
    default, without touching ~/.ray). On exit every process of the cluster is stopped by pid.
    """
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's Unix sockets live in it
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    address = f"127.0.0.1:{free_port()}"

    def ray_start(*args):
        # every node on one host needs its own agent and metrics ports
        command = [RAY, "start", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus_per_node}", f"--num-gpus={gpus_per_node}",
                   f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}", *args]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stderr[-3000:]}"

    try:
        ray_start("--head", f"--port={address.split(':')[1]}", f"--temp-dir={temp}", "--include-dashboard=false")
        for _ in range(nodes - 1):
            ray_start(f"--address={address}")
        yield address, env
    finally:
        own = [p for p in psutil.process_iter(["cmdline"]) if str(temp) in " ".join(p.info["cmdline"] or [])]
        kill_all({p.pid: p for q in own for p in [q, *descendants(q)]}.values(), grace=3)
        shutil.rmtree(temp, ignore_errors=True)
