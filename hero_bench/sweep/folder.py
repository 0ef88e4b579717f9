"""The results folder of a sweep, results/<name>/: what marks it as a sweep's, its lock, replacing it.

- `sweep.json` marks the folder as a hero-bench sweep's and holds, as plain JSON, what --resume
  needs: the resolved experiment, the Ray storage, the sweep's id (its checkpoints carry it) and the
  configurations a random or quasirandom search drew.
- `sweep.lock` is locked (flock) by the one sweep running in the folder, and names it. The kernel
  drops the lock when that process ends, however it ends, so a crashed sweep's lock is stale and
  the next sweep takes it over.
- --overwrite replaces only a sweep's folder: the new one is prepared beside it and swapped in by two
  renames, so the old results stay in place until the new folder is ready.
- A sweep's folder that a repository ships as committed (results/quickstart in hero-bench's own) is
  `shipped`: a sweep replaces it without --overwrite, saying so, since git brings it back.
"""
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

from hero_bench import trials
from hero_bench.atomic import refuse_links, write_atomic
from hero_bench.errors import ConfigError, HeroBenchError

MARKER, LOCK = "sweep.json", "sweep.lock"
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # the lock is never opened through a link (its truncation would hit the target)
JOURNAL = "optuna.journal"  # an optuna search's studies (hero_bench.sweep.study)
FORMAT = "hero-bench sweep"  # sweep.json's "format"
# Everything a sweep and `hero-bench leaderboard`/`report` write into the folder.
OUTPUTS = {"trials.csv", "history.csv", "hypotheses.json", "per_config.csv", "leaderboard.csv", "leaderboard.md",
           "leaderboard.html", "comparisons.csv", "report.md", "errors.log", "figures", "wandb", JOURNAL, MARKER, LOCK}


def read_marker(folder):
    """sweep.json's content, or None when the folder has no sweep.json of this format."""
    try:
        marker = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    fields = {"format": str, "sweep_id": str, "storage": str, "config": dict}
    if not isinstance(marker, dict) or marker.get("format") != FORMAT or not all(isinstance(marker.get(k), t) for k, t in fields.items()):
        return None
    return marker


def write_marker(folder, marker):
    write_atomic(Path(folder) / MARKER, json.dumps({"format": FORMAT, **marker}, indent=2) + "\n")


def is_sweep(folder):
    """Whether `folder` holds a hero-bench sweep: it has sweep.json, or (written before sweep.json
    marked folders) it holds a trials table and nothing hero-bench does not write."""
    folder = Path(folder)
    if read_marker(folder) is not None:
        return True
    names = {p.name for p in folder.iterdir()}
    if "trials.csv" not in names or not names <= OUTPUTS:
        return False
    try:
        trials.parse(folder)
    except HeroBenchError:
        return False
    return True


def shipped(folder):
    """Whether `folder` holds a sweep exactly as a git repository commits it: no sweep.json (git
    ignores it), only what hero-bench writes, every file tracked and unchanged, nothing ignored in it.
    Replacing such a folder loses nothing: `git checkout -- FOLDER` brings it back."""
    folder = Path(folder)
    if not folder.is_dir() or read_marker(folder) is not None or not is_sweep(folder):
        return False

    def git(*args):
        try:
            done = subprocess.run(["git", "-C", str(folder), *args, "--", "."], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):  # no git, or a hung one
            return None
        return done.stdout if done.returncode == 0 else None

    tracked, changed = git("ls-files"), git("status", "--porcelain", "--ignored", "--untracked-files=all")
    return bool(tracked) and changed == ""


def holder(folder):
    """What the lock of a sweep running in `folder` says about it, or None when none runs there."""
    try:
        fd = os.open(Path(folder) / LOCK, os.O_RDONLY | NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # dropped again by the close below
    except BlockingIOError:
        return os.read(fd, 1000).decode(errors="replace").strip() or "another sweep"
    finally:
        os.close(fd)
    return None


class Lock:
    """The exclusive lock of a results folder (its sweep.lock), held from `acquire` to `release`."""

    def __init__(self, folder):
        self.path, self.fd = Path(folder) / LOCK, None

    def acquire(self):
        refuse_links(self.path)
        while self.fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # the holder it may have waited for unlinks the file as it releases it
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    self.fd, fd = fd, None
            except BlockingIOError:
                raise in_use(self.path.parent, os.read(fd, 1000).decode(errors="replace").strip()) from None
            except FileNotFoundError:
                pass
            finally:
                if fd is not None:
                    os.close(fd)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        return self

    def release(self):
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(self.fd), os.stat(self.path)):
                self.path.unlink()
        os.close(self.fd)
        self.fd = None


def in_use(folder, who):
    return ConfigError(f"{folder} is in use by the sweep running as {who or 'another process'}; "
                       "wait for it to end (or stop it), then run again")


def check(folder, resume, overwrite):
    """Refuse, before anything is written, what a sweep must not do with `folder`: write into or
    replace a folder that is not a sweep's, replace a symbolic link, mix two sweeps, resume nothing,
    or share the folder with a sweep running there."""
    folder = Path(folder)
    if overwrite and folder.is_symlink():
        raise ConfigError(f"--overwrite: {folder} is a symbolic link (to {os.readlink(folder)}); it replaces only a folder "
                          "a sweep wrote: remove the link, or choose another --results or name")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file, not a results folder; choose another --results or name")
    if not folder.is_dir():
        if resume:
            raise ConfigError(f"--resume: nothing to resume, {folder / MARKER} does not exist; run without --resume first")
        return
    running = holder(folder)
    if running:
        raise in_use(folder, running)
    check_contents(folder, resume, overwrite)


def check_contents(folder, resume, overwrite):
    if resume:
        if not (folder / MARKER).exists():
            raise ConfigError(f"--resume: nothing to resume, {folder / MARKER} does not exist; run without --resume first")
        if read_marker(folder) is None:
            raise ConfigError(f"--resume: {folder / MARKER} does not hold the experiment it ran (an older hero-bench "
                              "wrote it), so the sweep cannot be checked and continued; start it again with --overwrite")
        return
    if not {p.name for p in folder.iterdir()} - {LOCK}:
        return
    if not is_sweep(folder):
        raise ConfigError(f"{folder} holds files that are not a hero-bench sweep's (it has no {MARKER}); a sweep neither "
                          "writes into nor replaces such a folder: choose another --results or name")
    if not overwrite:
        raise ConfigError(f"{folder} already holds a sweep; pass --resume to continue it or --overwrite to replace it")


def prepare(folder, resume, overwrite, marker):
    """Lock `folder` for this sweep, check it again under the lock, make it ready (created, or with
    --overwrite replaced by a new one) and write its sweep.json (`marker`). Returns the held Lock."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = Lock(folder).acquire()
    except OSError as exc:
        raise ConfigError(f"cannot write to {folder}: {exc.strerror or exc}; choose another parent folder with --results") from None
    try:
        check_contents(folder, resume, overwrite)
        if overwrite and {p.name for p in folder.iterdir()} - {LOCK}:
            old, lock = lock, replace(folder, marker)
            old.release()
        else:
            write_marker(folder, marker)
    except BaseException:
        lock.release()
        raise
    return lock


def replace(folder, marker):
    """Swap `folder` for a new one holding only sweep.json and the new sweep's lock, then delete the
    old one. A failure before the swap leaves the old folder as it was."""
    token = secrets.token_hex(4)
    new, old = folder.with_name(f".{folder.name}.new-{token}"), folder.with_name(f".{folder.name}.old-{token}")
    lock = None
    try:
        new.mkdir()
        write_marker(new, marker)
        lock = Lock(new).acquire()
        os.rename(folder, old)
        try:
            os.rename(new, folder)
        except OSError:
            os.rename(old, folder)
            raise
    except (OSError, ConfigError) as exc:
        if lock is not None:
            lock.release()
        shutil.rmtree(new, ignore_errors=True)
        why = exc.strerror if isinstance(exc, OSError) else exc
        raise ConfigError(f"--overwrite: cannot replace {folder}: {why}; it is unchanged") from None
    lock.path = folder / LOCK
    shutil.rmtree(old, ignore_errors=True)  # a crash here leaves .<name>.old-*, never a half-deleted results folder
    return lock
