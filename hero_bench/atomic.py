"""Atomic file writes: a temp file in the target's folder, then os.replace, so a reader (or a crash)
never sees half a file, and a failed write leaves the previous file as it was."""
import os
import tempfile
from pathlib import Path

from hero_bench.errors import ConfigError


def write_atomic(path, data):
    """Write str or bytes to `path` and return it. A failure (disk full, no permission) is one clear
    ConfigError naming the file; no temp file is left behind."""
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}; the previous file is unchanged") from None
    return path
