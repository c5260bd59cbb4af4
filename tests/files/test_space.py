"""An unwritable or full disk is one line that names the path, the space and the fix, and stops before loading."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from medtune.files import space


def test_read_only_dir_names_the_path_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "runs"))

    monkeypatch.setattr(space.tempfile, "NamedTemporaryFile", read_only)
    with pytest.raises(space.StorageError) as info:
        space.check_writable(tmp_path / "runs", "hydra.run.dir")
    msg = str(info.value)
    assert f"hydra.run.dir={tmp_path / 'runs'} (Read-only file system" in msg and "\n" not in msg
    assert "MEDTUNE_RUNS_DIR" in msg and "hydra.sweep.dir" in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_directory_without_write_permission(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(space.StorageError, match="Permission denied"):
            space.check_writable(locked / "run", "hydra.run.dir")
    finally:
        locked.chmod(0o700)


def test_explain_gives_one_line_for_a_full_disk_and_nothing_for_other_errors(tmp_path: Path) -> None:
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "metrics.jsonl"))
    line = space.explain(full)
    assert line.startswith(f"could not write {tmp_path / 'metrics.jsonl'}: No space left on device [errno 28]; ")
    assert "free on that disk" in line and "MEDTUNE_RUNS_DIR" in line
    assert space.explain(ValueError("x")) is None and space.explain(FileNotFoundError(2, "no")) is None
    assert space.size_text(1536) == "1.5 KiB" and space.size_text(3 * 2**30) == "3.0 GiB"


@pytest.mark.parametrize("multirun", [False, True])
def test_unwritable_runs_dir_stops_before_anything_loads(tmp_path: Path, multirun: bool) -> None:
    """MEDTUNE_RUNS_DIR below a plain file: no directory can be made there, whoever runs it (root included)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    env = {**os.environ, "MEDTUNE_RUNS_DIR": str(blocker / "runs"), "MEDTUNE_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "medtune.train", *(["-m"] if multirun else []), "model=tiny_llama"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    wall_s = time.perf_counter() - started
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    assert f"cannot write the run directory {key}={blocker / 'runs'}" in out and "MEDTUNE_RUNS_DIR" in out
    assert "Traceback" not in out and "built tiny_llama" not in out  # stopped before the model
    assert wall_s < 60  # Hydra's start-up, about 5 s here on a loaded 2-core machine; a model load would add more
