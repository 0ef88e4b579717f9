"""File writes: atomic ones (a temp file in the target's folder, then os.replace, so a reader or a
crash never sees half a file, and a failed write leaves the previous file as it was) and appended
lines. Neither follows a symbolic link: a file, or the folder it is in, that is a link is refused
(a `figures` link would put the figures, over whatever is there, wherever it points)."""
import os
import secrets
from pathlib import Path

from hero_bench.errors import ConfigError


def write_atomic(path, data):
    """Write str or bytes to `path` and return it. A failure (disk full, no permission) is one clear
    ConfigError naming the file; no temp file is left behind."""
    path, tmp = Path(path), None
    refuse_links(path)
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


def append(path, text):
    """Append `text` to the file `path` (created if need be). A failure is one ConfigError naming it."""
    path = Path(path)
    refuse_links(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        with os.fdopen(fd, "a") as f:
            f.write(text)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def refuse_links(path):
    """Refuse (ConfigError) to write `path` when it, or the folder it is in, is a symbolic link."""
    link = next((p for p in (Path(path), Path(path).parent) if p.is_symlink()), None)
    if link is not None:
        raise ConfigError(f"cannot write {path}: {link} is a symbolic link (to {os.readlink(link)}); hero-bench writes "
                          "only into real folders and files: remove the link")


def temp_file(path):
    """(fd, path) of a new file beside `path`. Created with mode 0666 less the umask, as any new file
    is: the rename keeps the temp file's mode, and mkstemp's 0600 would hide results from others."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
