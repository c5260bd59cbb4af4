"""One writer per run directory: a second process is refused naming the holder; a dead holder's lock is free again;
the ranks of one torchrun job go on together and the ranks of another are all refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from medtune.files import run_lock

HOLD = (
    "import sys, time; from pathlib import Path; from medtune.files.run_lock import hold_run_dir, RunDirBusy\n"
    "try:\n    hold_run_dir(Path(sys.argv[1]))\nexcept RunDirBusy as err:\n    print(err); sys.exit(2)\n"
    "print('held', flush=True); time.sleep(float(sys.argv[2]))\n"
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def _holder(run: Path, seconds: float = 60, **env: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run), str(seconds)], env=_env(**env), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _try(run: Path, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", HOLD, str(run), "0"]
    return subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(120)
def test_a_second_process_is_refused_and_a_dead_holders_lock_is_free(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        refused = _try(run)
        assert refused.returncode == 2
        line = refused.stdout.strip()
        assert "\n" not in line and f"the run directory {run} is in use by pid {holder.pid} on " in line
        assert "pick another hydra.run.dir" in line
        record = json.loads((run / run_lock.LOCK_NAME).read_text())
        assert record["pid"] == holder.pid and record["host"] and record["started"] and record["job"] == ""
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean-up runs: the kernel drops the flock
        holder.wait(timeout=30)
    assert _try(run).returncode == 0


def test_this_process_may_take_its_own_lock_again(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_lock.hold_run_dir(run)
    try:
        run_lock.hold_run_dir(run)  # a second run in one process (tests, notebooks)
        assert _try(run).returncode == 2
    finally:
        run_lock.release_run_dir(run)
    assert _try(run).returncode == 0


TORCHRUN_A = {"WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "a", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
TORCHRUN_B = {**TORCHRUN_A, "MASTER_PORT": "2"}  # another job on the same host: another master port


@pytest.mark.timeout(120)
def test_ranks_of_the_holding_job_go_on_and_another_jobs_ranks_are_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = _holder(run, **TORCHRUN_A, RANK="0")
    try:
        assert _try(run, **TORCHRUN_A, RANK="1").returncode == 0  # its own rank 0 holds it: rank 1 writes too
        for rank in ("0", "1"):
            refused = _try(run, **TORCHRUN_B, RANK=rank)
            assert refused.returncode == 2 and f"in use by pid {holder.pid}" in refused.stdout, refused.stdout
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)


@pytest.mark.timeout(120)
def test_rank_1_waits_for_its_rank_0(tmp_path: Path) -> None:
    """Rank 1 may get there first; it waits until its rank 0 holds the lock, even over a dead job's record."""
    run = tmp_path / "run"
    dead = _holder(run, **TORCHRUN_B, RANK="0")
    dead.send_signal(signal.SIGKILL)
    dead.wait(timeout=30)
    cmd = [sys.executable, "-c", HOLD, str(run), "0"]
    rank1 = subprocess.Popen(cmd, env=_env(**TORCHRUN_A, RANK="1"), stdout=subprocess.PIPE, text=True)
    time.sleep(1.5)
    assert rank1.poll() is None, "rank 1 went on before its rank 0 held the lock"
    rank0 = _holder(run, **TORCHRUN_A, RANK="0")
    try:
        assert rank1.wait(timeout=30) == 0
    finally:
        rank0.send_signal(signal.SIGKILL)
        rank0.wait(timeout=30)
