"""What a sweep's own local Ray leaves on the machine, and how it goes again.

Without --address a sweep starts a Ray of its own (hero_bench.sweep.cluster), whose session (logs,
sockets, spilled objects) and whose workers' temp files (checkpoints being written) go under one
folder of the sweep's own, /tmp/hero-bench-<uid>/<pid>-<token> (`folder`), with an owner.json that
names the sweep's process. When Ray has been shut down (the sweep finished, failed or was
interrupted, even while Ray was starting), every process that still has a file open in that folder
or names it on its command line is stopped by pid (Ray's agents outlive a raylet stopped in a hurry),
and the folder is removed. A sweep killed with SIGKILL cannot do that; the next sweep on the machine,
into any results folder, finds the folder of a process that is gone and does it for it. Only this
user's folders, and processes with files in them, are touched: never another Ray.
"""
import contextlib
import json
import os
import secrets
import shutil
import signal
import threading
from pathlib import Path

import ray  # noqa: F401 - first: Ray puts the psutil it bundles on sys.path
import psutil

from hero_bench.errors import ConfigError

OWNER = "owner.json"
GRACE_S = 3  # a process asked to stop (SIGTERM) has this long before SIGKILL


def root():
    """This user's folder of sweep folders: short, as Ray's Unix sockets live under it (107 bytes at most)."""
    return Path(os.environ.get("RAY_TMPDIR") or "/tmp") / f"hero-bench-{os.getuid()}"


@contextlib.contextmanager
def folder():
    """A new sweep folder, cleaned with every process left in it once the block ends (Ray shut down
    by then). Folders of sweeps whose process is gone are cleaned first."""
    base = root()
    base.mkdir(mode=0o700, exist_ok=True)
    if base.is_symlink() or base.stat().st_uid != os.getuid():
        raise ConfigError(f"{base} is not a folder of your own (a link, or another user's); remove it, or set RAY_TMPDIR")
    clean_dead(base)
    path = base / f"{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir(mode=0o700)
    (path / OWNER).write_text(json.dumps({"pid": os.getpid(), "started": psutil.Process().create_time()}) + "\n")
    try:
        yield path
    finally:
        with signals_held():  # a second Ctrl-C must not leave half of it behind
            clean(path)


def clean_dead(base):
    """Clean every sweep folder under `base` whose owner (its process, by pid and start time) is gone."""
    for path in base.iterdir():
        if path.is_dir() and not path.is_symlink() and not owner_alive(path):
            clean(path)


def owner_alive(path):
    try:
        owner = json.loads((path / OWNER).read_text())
        return psutil.Process(owner["pid"]).create_time() == owner["started"]
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return False


def clean(path):
    """Stop every process with a file open in `path` or naming it on its command line, then remove it."""
    stop([p for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == os.getuid() and uses(p, path)])
    shutil.rmtree(path, ignore_errors=True)


def uses(process, path):
    inside = str(path) + os.sep
    with contextlib.suppress(psutil.Error):
        if process.pid == os.getpid():
            return False
        if any(inside in arg or arg == str(path) for arg in process.cmdline()):
            return True
        return any(f.path.startswith(inside) for f in process.open_files())
    return False


def stop(processes):
    """SIGTERM, GRACE_S seconds, then SIGKILL (psutil checks each one's identity: a reused pid is never hit)."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    for process in psutil.wait_procs(processes, timeout=GRACE_S)[1]:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(processes, timeout=GRACE_S)


@contextlib.contextmanager
def signals_held():
    """SIGINT and SIGTERM held back in the block (delivered after it), where the main thread may hold them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
