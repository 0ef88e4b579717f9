"""Starting or joining Ray, and checking that the cluster can run the trials."""
import contextlib
import os
import signal
import socket
import threading
import warnings

import ray

from hero_bench.errors import ConfigError
from hero_bench.sweep import session


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


@contextlib.contextmanager
def ray_running(address, modules=()):
    """Ray for the block: one already running in this process (its owner's to shut down), else a local
    Ray of the sweep's own (address None) in a folder of its own (hero_bench.sweep.session), else the
    cluster at `address`, joined. Shut down at the end however the block ends; a local Ray's processes
    all stopped, even when Ctrl-C or SIGTERM came while it started.

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
                          "start it", stacklevel=3)
        yield
        return
    if address is None:
        with session.folder() as temp:
            try:
                # its temp folder, and through the raylet that of every worker (checkpoints being written);
                # its trial workers at the driver's priority: Ray's default, nice 15, starves the trials on
                # a machine shared with other work (RAY_worker_niceness set by the user is kept)
                with environment(TMPDIR=str(temp), RAY_worker_niceness=os.environ.get("RAY_worker_niceness", "0")):
                    init(address="local", num_cpus=local_cpus(), include_dashboard=False, configure_logging=False,
                         _temp_dir=str(temp), runtime_env=runtime_env)
                yield
            finally:
                ray.shutdown()
        return
    check_address(address)
    try:
        init(address=address, runtime_env=runtime_env)
    except ConnectionError as exc:
        raise ConfigError(f"--address {address}: {exc}") from None
    try:
        total = ray.cluster_resources()
        nodes = sum(node["Alive"] for node in ray.nodes())
        print(f"joined the Ray cluster at {address}: {nodes} nodes, {total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs")
        yield
    finally:
        ray.shutdown()


def local_cpus():
    """The CPUs of a sweep's own local Ray: this machine's."""
    return os.cpu_count()


def init(**kwargs):
    """ray.init, with SIGTERM still what it was: ray.init installs a handler that exits on SIGTERM
    (without a word, its processes left running); while it runs, a SIGTERM is a Ctrl-C, and afterwards
    the handler in place before comes back."""
    handler = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(**kwargs)
    except SystemExit as exc:
        if exc.code != signal.SIGTERM:
            raise
        raise KeyboardInterrupt from None
    finally:
        if threading.current_thread() is threading.main_thread() and handler is not None:
            signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def environment(**variables):
    """os.environ with `variables` set for the block, as it was afterwards."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check_resources(resources, address, total=None, kinds=("gpu", "cpu")):
    """Refuse a trial that cannot fit the local machine; on a cluster (--address) only warn, since
    an autoscaler may still add the nodes it needs. `total`: the resources there are (by default the
    running Ray's); `kinds`: which to check. Before a local Ray starts, its CPUs are known
    (`local_cpus`), its GPUs only once Ray has looked for them."""
    total = ray.cluster_resources() if total is None else total
    for name, wanted in ((kind, getattr(resources, kind)) for kind in kinds):
        have = total.get(name.upper(), 0)
        if wanted > 0 and have < wanted:
            message = f"sweep.resources_per_trial.{name} is {wanted:g} but the Ray cluster has {have:g} {name.upper()}s"
            if address is None:
                raise ConfigError(f"{message}; lower it or join a cluster that has them (--address)")
            warnings.warn(f"{message} now; trials wait until the cluster (its autoscaler) provides them", stacklevel=2)
