"""Where a sweep writes, tried before anything is replaced, and the Ray storage owned by one sweep.

- `unwritable`: a folder (the results folder, a --storage path) is created if need be, a test file
  written in it and removed, and every folder created for it removed again; a URI's filesystem
  (s3://, gs://, ...) must resolve and take a test object, within PROBE_TIMEOUT_S (a bucket that does
  not answer would stall Ray for minutes). Both run before --overwrite replaces anything and before
  Ray starts, so a mistake there costs nothing.
- The sweep's folder in the Ray storage, `<storage>/<name>`, holds OWNER (JSON: the sweep's id, its
  results folder and host), written once the results folder is locked (`claim`). A sweep of another
  results folder is refused that storage folder while the sweep recorded there still has its results
  (their trials would mix, and Ray's state of the one would be resumed as the other's); --resume
  continues only the sweep whose id is recorded there (`check_owner`).
"""
import json
import secrets
import socket
import threading
from pathlib import Path

import pyarrow.fs

from hero_bench.errors import ConfigError
from hero_bench.sweep import folder

OWNER = "hero-bench-sweep.json"
PROBE_TIMEOUT_S = 30


def is_uri(target):
    return "://" in str(target)


def unwritable(target):
    """Why nothing can be written under `target` (a path or a URI), or None when a test file could be
    written and removed there. Leaves nothing behind."""
    return (uri_unwritable if is_uri(target) else path_unwritable)(str(target))


def path_unwritable(target):
    path = Path(target)
    missing = [p for p in (path, *path.parents) if not p.exists() and not p.is_symlink()]
    try:
        if path.exists() and not path.is_dir():
            return "it is a file, not a folder"
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".hero-bench-probe-{secrets.token_hex(4)}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        for created in (p for p in missing if p.is_dir()):  # deepest first; one holding something now is another's
            try:
                created.rmdir()
            except OSError:
                break
    return None


def uri_unwritable(uri):
    outcome = []

    def attempt():
        try:
            fs, root = pyarrow.fs.FileSystem.from_uri(uri)
            fs.create_dir(root, recursive=True)
            probe = f"{root.rstrip('/')}/.hero-bench-probe-{secrets.token_hex(4)}"
            with fs.open_output_stream(probe) as stream:
                stream.write(b"")
            fs.delete_file(probe)
            outcome.append(None)
        except Exception as exc:  # noqa: BLE001 - whatever the filesystem says, in one line
            outcome.append(" ".join(str(exc).split())[:300] or type(exc).__name__)

    worker = threading.Thread(target=attempt, daemon=True)  # one that never answers is left behind
    worker.start()
    worker.join(PROBE_TIMEOUT_S)
    return outcome[0] if outcome else f"no answer within {PROBE_TIMEOUT_S} s"


def read_owner(experiment):
    """The owner record of the sweep folder `experiment` in the storage, or None when it has none."""
    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(f"{experiment.rstrip('/')}/{OWNER}")
        with fs.open_input_stream(path) as stream:
            owner = json.loads(stream.readall())
    except (OSError, ValueError):
        return None
    fields = {"sweep_id": str, "results": str, "host": str}
    return owner if isinstance(owner, dict) and all(isinstance(owner.get(k), t) for k, t in fields.items()) else None


def check_owner(experiment, results_dir, sweep_id, resume):
    """Refuse the storage folder `experiment` to a sweep (of `results_dir`, id `sweep_id`) when another
    sweep's trials are there: on --resume, any sweep but this one; else a sweep of another results
    folder that still holds it (a folder of this host whose sweep.json has another id, or none, is
    stale and taken over; one on another host cannot be looked at, so it counts as held)."""
    owner = read_owner(experiment)
    if owner is None or owner["sweep_id"] == sweep_id:
        return
    whose = f"the sweep {owner['sweep_id']} of {owner['results']} on {owner['host']}"
    if resume:
        raise ConfigError(f"--resume: the Ray storage {experiment} holds the trials of {whose}, not of this sweep ({sweep_id}), "
                          "whose checkpoints may be gone or mixed with them; start this sweep again with --overwrite, "
                          "or with another --storage")
    if owner["host"] == socket.gethostname():
        if owner["results"] == str(results_dir):
            return  # this results folder's earlier sweep (replaced with --overwrite, or deleted)
        marker = folder.read_marker(owner["results"])
        if marker is None or marker["sweep_id"] != owner["sweep_id"]:
            return  # its results are gone or were replaced: nobody resumes it any more
    raise ConfigError(f"the Ray storage {experiment} holds the trials of {whose}; a sweep of another results folder "
                      "would mix its trials with them: choose another --storage (or name), or remove that sweep's "
                      "results and its storage folder first")


def claim(experiment, results_dir, sweep_id):
    """Record in the storage folder `experiment` that its trials are those of sweep `sweep_id` of `results_dir`."""
    owner = {"sweep_id": sweep_id, "results": str(results_dir), "host": socket.gethostname()}
    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(f"{experiment.rstrip('/')}/{OWNER}")
        fs.create_dir(path.rpartition("/")[0], recursive=True)
        with fs.open_output_stream(path) as stream:
            stream.write((json.dumps(owner, indent=2) + "\n").encode())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot write {experiment.rstrip('/')}/{OWNER}: {' '.join(str(exc).split())[:300]}") from None
