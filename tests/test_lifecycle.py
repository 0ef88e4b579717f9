"""A sweep's lifecycle loses nothing and runs nothing it should not, each fault caused for real."""
import os
import stat

import pytest

from hero_bench import atomic


# ------------------------------------------------------------------ 7. files respect the umask

@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_written_files_get_the_mode_the_umask_gives_any_new_file(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic.write_atomic(tmp_path / "trials.csv", "trial_id,status\n")
        (tmp_path / "plain.csv").write_text("trial_id,status\n")  # made the ordinary way
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "trials.csv").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.csv").stat().st_mode) == 0o666 & ~umask
