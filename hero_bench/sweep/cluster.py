"""Starting or joining Ray, and checking that the cluster can run the trials."""
import os
import socket
import warnings

import ray

from hero_bench.errors import ConfigError


def check_address(address):
    """Fail within seconds, with a clear message, when a Ray address cannot be reached."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address must be 'auto', host:port or ray://host:port, got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as exc:
        raise ConfigError(f"--address {address}: cannot reach the Ray cluster ({exc.strerror or exc}); is `ray start --head` running there?") from None


def start_ray(address, modules=()):
    """A local Ray of this machine's own (address None), or the cluster at `address`.

    `modules`: plugin modules (hero_bench.plugins.shipped) that Ray ships to every worker of the
    sweep, on every node, with its runtime environment (`py_modules`: a module file or a package
    folder, uploaded once and put on each worker's Python path). A Ray started before the sweep
    keeps its own runtime environment: the modules are not shipped, with a warning.
    """
    runtime_env = {"py_modules": list(modules)} if modules else None
    if ray.is_initialized():
        if modules:
            warnings.warn(f"Ray was started before this sweep, so the plugin module(s) {', '.join(m.__name__ for m in modules)} "
                          "are not shipped to its workers; start Ray with runtime_env={'py_modules': [...]}, or let the sweep "
                          "start it", stacklevel=2)
        return
    if address is None:
        # "local": always a new Ray of this machine's own, never one a `ray start` left running here
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False,
                 runtime_env=runtime_env)
        return
    check_address(address)
    try:
        ray.init(address=address, runtime_env=runtime_env)
    except ConnectionError as exc:
        raise ConfigError(f"--address {address}: {exc}") from None
    total = ray.cluster_resources()
    nodes = sum(node["Alive"] for node in ray.nodes())
    print(f"joined the Ray cluster at {address}: {nodes} nodes, {total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs")


def check_resources(resources, address):
    """Refuse a trial that cannot fit the local machine; on a cluster (--address) only warn, since
    an autoscaler may still add the nodes it needs."""
    total = ray.cluster_resources()
    for name, wanted in (("gpu", resources.gpu), ("cpu", resources.cpu)):
        have = total.get(name.upper(), 0)
        if wanted > 0 and have < wanted:
            message = f"sweep.resources_per_trial.{name} is {wanted:g} but the Ray cluster has {have:g} {name.upper()}s"
            if address is None:
                raise ConfigError(f"{message}; lower it or join a cluster that has them (--address)")
            warnings.warn(f"{message} now; trials wait until the cluster (its autoscaler) provides them", stacklevel=2)
