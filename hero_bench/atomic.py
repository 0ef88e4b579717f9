"""Atomic file writes: a temp file in the target's folder, then os.replace, so a reader (or a crash)
never sees half a file, and a failed write leaves the previous file as it was."""
import os
import secrets
from pathlib import Path

from hero_bench.errors import ConfigError


def write_atomic(path, data):
    """Write str or bytes to `path` and return it. A failure (disk full, no permission) is one clear
    ConfigError naming the file; no temp file is left behind."""
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_file(path)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it the file
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}; the previous file is unchanged") from None
    return path


def temp_file(path):
    """(fd, path) of a new file beside `path`. Created with mode 0666 less the umask, as any new file
    is: the rename keeps the temp file's mode, and mkstemp's 0600 would hide results from others."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
