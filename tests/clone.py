"""A fresh clone of this repository for tests that act as a new user: the files git would clone (the
tracked ones and any new ones not ignored, as the working tree has them) in a new git repository
with one commit, so what the repository ships is committed there, as in a clone. Nothing that git
ignores comes along (sweep.json, runs/, ray_results/, build/, ...)."""
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=hero-bench tests", "-c", "user.email=tests@hero-bench.invalid"]


def fresh_clone(dest):
    """Copy the repository into the new folder `dest` and commit it there; returns `dest`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    dest = Path(dest)
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # a file deleted in the working tree is not cloned
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "fresh clone"]):
        subprocess.run([*GIT, *args], cwd=dest, check=True, capture_output=True)
    return dest
