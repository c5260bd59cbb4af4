"""One writer per run directory: a lock taken before anything is written into it, held until the process exits.

    hold_run_dir(run_dir)        # RunDirBusy (one line naming the holder) when another live process holds it

The lock is `fcntl.flock` on `<run_dir>/.medtune.lock`, so the kernel releases it however the holder ends (an
exception, SIGKILL, the out-of-memory killer): a lock whose holder is gone is free again, with nothing to clean up.
The file records the holder (`pid`, `host`, `started`, `command`, `job`) for the message a second process gets.
`medtune.train` and `medtune.evaluate` take it from their Hydra callback (`space.RunDirCheck`) before Hydra writes
`.hydra/` or its log; a sweep takes it on its sweep directory.

Under torchrun the job's rank 0 holds it. The other ranks of that job do not lock (they would exclude each other);
they wait until the lock is held and read its record: their own job's rank 0 (same `job`: the launcher's run id,
master address and port) lets them go on, another job stops them too, so no rank of a second job writes anything.
File systems without flock (some network mounts) run unlocked, with a warning.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from medtune.files.atomic import FILE_MODE

log = logging.getLogger("medtune.train")
LOCK_NAME = ".medtune.lock"
RANK_WAIT_S = 120.0  # how long ranks > 0 wait for their rank 0 to take the lock (it composes the same config)
_NO_LOCKING = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_HELD: dict[str, int] = {}  # run directory -> descriptor holding its lock, for this process's lifetime


class RunDirBusy(RuntimeError):
    """Another live process writes this run directory; the message names it and what to do."""


def job_id() -> str:
    """This process's launch: the torchrun job (run id @ master address:port), or '' for a plain process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return ""
    env = os.environ
    return f"{env.get('TORCHELASTIC_RUN_ID', '')}@{env.get('MASTER_ADDR', '')}:{env.get('MASTER_PORT', '')}"


def holder_record() -> dict:
    """What the lock file says about its holder."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(" ".join([Path(sys.orig_argv[0]).name, *sys.orig_argv[1:]]).split())[:300],
        "job": job_id(),
    }


def read_holder(run_dir: Path) -> dict | None:
    """The record in the run directory's lock file (None when absent or being written)."""
    try:
        return json.loads((Path(run_dir) / LOCK_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def busy_message(run_dir: Path, holder: dict | None) -> str:
    """The one line a second process gets."""
    who = (
        f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')} ({holder.get('command')})"
        if holder
        else "another process"
    )
    return (
        f"the run directory {run_dir} is in use by {who}: one process writes a run directory at a time. Wait for it "
        "to end (trainer.resume=auto continues it afterwards), or pick another hydra.run.dir."
    )


def hold_run_dir(run_dir: Path, rank: int | None = None) -> None:
    """Take the run directory's lock for the rest of this process (rank 0), or check that our rank 0 has it."""
    run_dir = Path(os.path.abspath(run_dir))
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    if rank != 0:
        _wait_for_our_rank0(run_dir)
        return
    if str(run_dir) in _HELD:  # this process holds it already (a second run in the same process)
        _write_record(_HELD[str(run_dir)])
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirBusy(busy_message(run_dir, read_holder(run_dir))) from None
    except OSError as err:
        os.close(fd)
        if err.errno not in _NO_LOCKING:
            raise
        log.warning("cannot lock %s (%s): nothing stops a second process from writing it", run_dir, err)
        return
    try:
        _write_record(fd)
    except OSError:
        os.close(fd)  # a full disk: the caller says so; the lock goes with the descriptor
        raise
    _HELD[str(run_dir)] = fd


def release_run_dir(run_dir: Path) -> None:
    """Let the run directory go before this process ends (tests, several runs in one process)."""
    fd = _HELD.pop(os.path.abspath(run_dir), None)
    if fd is not None:
        os.close(fd)


def _write_record(fd: int) -> None:
    data = (json.dumps(holder_record()) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _held_by_someone(run_dir: Path) -> bool:
    """True when a process holds the lock (a shared lock cannot be had); False when it is free."""
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False  # closing drops the shared lock at once
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _wait_for_our_rank0(run_dir: Path, wait_s: float = RANK_WAIT_S) -> None:
    """Ranks > 0: go on once our job's rank 0 holds the lock; RunDirBusy when another job does."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            held = _held_by_someone(run_dir)
        except OSError as err:
            if err.errno in _NO_LOCKING:
                return  # unlocked file system: rank 0 warned
            raise
        holder = read_holder(run_dir) if held else None
        if holder is not None:
            if holder.get("job") == job_id():
                return
            time.sleep(0.5)  # our rank 0 may have just taken the lock and not yet replaced an old record
            if read_holder(run_dir) == holder and _held_by_someone(run_dir):
                raise RunDirBusy(busy_message(run_dir, holder))
            continue
        if time.monotonic() > deadline:
            raise RunDirBusy(
                f"rank {os.environ.get('RANK')} waited {wait_s:.0f} s for rank 0 to take the lock of {run_dir} "
                "(rank 0 may have stopped; see its log)."
            )
        time.sleep(0.1)
