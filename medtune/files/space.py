"""A full disk or an unwritable directory, said in one line: the path, the space, what to do.

    StorageError: raised by checkpoint writes (training/checkpoint/) with the space a checkpoint needs and what's free.
    explain(err): that line for any error of a failed write (None when `err` is something else).
    RunDirCheck: a Hydra callback (conf/train.yaml) that, before Hydra writes into the run (or sweep) directory,
        stops with exit code 2 and one line when it cannot be written, when its disk is full, or when another live
        process holds it (run_lock); else it takes the directory's lock and reserves room for summary.json.
    reserve(run_dir) / release_reserve(run_dir): RESERVE_BYTES held on the run's disk from its start, given back
        just before the final record is written, so that a disk that filled mid-run still takes summary.json.

No torch import: the callback runs while Hydra starts.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from medtune.files.run_lock import RunDirBusy, hold_run_dir

log = logging.getLogger("medtune.train")

GIB = 1024**3  # bytes in a GiB: the unit of every memory and disk figure medtune prints

# errors of a write that more space, another directory or other permissions would fix
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}
RESERVE_NAME = ".medtune-reserve"
RESERVE_BYTES = 64 * 1024  # summary.json is about 5 KB; its temporary file and directory blocks fit many times
WHERE_TO = "set MEDTUNE_RUNS_DIR to a writable directory with room, or hydra.run.dir=<dir> (hydra.sweep.dir with -m)"


class StorageError(RuntimeError):
    """Something could not be written; the message names the path, the space and the fix, on one line."""


def free_bytes(path: Path) -> int | None:
    """Free bytes on the disk that holds `path` (or its nearest existing parent); None when unknown."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def size_text(n_bytes: int | None) -> str:
    """1536 -> '1.5 KiB'; None -> 'unknown'."""
    if n_bytes is None:
        return "unknown"
    size = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def write_failure(what: str, path: Path, err: BaseException, need_bytes: int | None, fix: str) -> StorageError:
    """The one-line error of a failed write of `what` into `path` (torch's zip writer raises RuntimeError)."""
    seen: BaseException | None = err
    while seen is not None and not (isinstance(seen, OSError) and seen.strerror):
        seen = seen.__cause__ or seen.__context__  # the zip writer's RuntimeError hides the ENOSPC it met
    err = seen or err
    if isinstance(err, OSError) and err.strerror:
        reason = f"{err.strerror} [errno {err.errno}]"
    else:  # e.g. "[enforce fail at inline_container.cc] ... unexpected pos": the disk filled mid-file
        reason = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}"
    need = f"it needs about {size_text(need_bytes)}, " if need_bytes else ""
    return StorageError(
        f"could not write {what} to {path} ({reason}); {need}{size_text(free_bytes(path))} free on that disk. {fix}"
    )


def explain(err: BaseException) -> str | None:
    """One line for an error of a failed write (a StorageError, or an OSError of a full or unwritable disk)."""
    if isinstance(err, StorageError):
        return str(err)
    if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
        where = Path(err.filename) if err.filename else Path.cwd()
        return (
            f"could not write {where}: {err.strerror} [errno {err.errno}]; {size_text(free_bytes(where))} free on "
            f"that disk. Free space or fix the permissions, or {WHERE_TO}."
        )
    return None


def check_writable(path: Path, key: str) -> None:
    """Create `path` if needed and a file in it; StorageError naming the key and the fix when that fails."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".medtune-write-check-"):
            pass
    except OSError as err:
        raise StorageError(
            f"cannot write the run directory {key}={path} ({err.strerror or err} at {err.filename or path}); "
            f"{WHERE_TO}."
        ) from err


def reserve(run_dir: Path) -> None:
    """Hold RESERVE_BYTES of real blocks in `run_dir` (zeros written, not a sparse file); OSError when full."""
    path = Path(run_dir) / RESERVE_NAME
    if path.is_file() and path.stat().st_size == RESERVE_BYTES:
        return
    try:
        with path.open("wb") as handle:
            handle.write(bytes(RESERVE_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError:
        path.unlink(missing_ok=True)
        raise


def release_reserve(run_dir: Path | None) -> None:
    """Give the reserved room back (call it right before writing the final record)."""
    if run_dir is not None:
        (Path(run_dir) / RESERVE_NAME).unlink(missing_ok=True)


def with_path(err: OSError, path: Path) -> OSError:
    """`err` with `path` as its file name when it has none (a write to an open file names no file)."""
    if err.filename is None:
        err.filename = str(path)
    return err


class RunDirCheck(Callback):
    """Before Hydra writes into the run (sweep) directory: writable, room, one writer; else exit code 2, one line."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Check and claim hydra.run.dir before Hydra creates it and logs into it."""
        _check_or_exit(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Check and claim hydra.sweep.dir before the first job."""
        _check_or_exit(config, "hydra.sweep.dir")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """The sweep's reserve is not needed once every job has written its record."""
        release_reserve(_target(config, "hydra.sweep.dir"))


def _target(config: DictConfig, key: str) -> Path | None:
    try:
        target = OmegaConf.select(config, key)
    except Exception:  # an interpolation only Hydra can resolve later: it reports its own errors
        return None
    return None if target is None else Path(str(target))


def _check_or_exit(config: DictConfig, key: str) -> None:
    target = _target(config, key)
    if target is None:
        return
    try:
        check_writable(target, key)
        try:
            hold_run_dir(target)
            if int(os.environ.get("RANK", "0")) == 0:
                reserve(target)
        except OSError as err:
            if err.errno not in DISK_ERRNOS:
                raise
            what = f"the lock and the summary reserve of {key}"
            raise write_failure(what, target, err, RESERVE_BYTES, f"Free space, or {WHERE_TO}.") from err
    except (StorageError, RunDirBusy) as err:
        log.error("%s", err)
        sys.exit(2)  # SystemExit passes through Hydra's callback guard, which turns exceptions into warnings
