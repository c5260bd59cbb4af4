"""A full disk or an unwritable directory, said in one line: the path, the space, what to do.

    StorageError: raised by checkpoint writes (checkpoint.py) with the space the checkpoint needs and what is free.
    explain(err): that line for any error of a failed write (None when `err` is something else).
    RunDirCheck: a Hydra callback (conf/train.yaml) that stops with exit code 2 before anything loads when the run
        or sweep directory cannot be written.

No torch import: the callback runs while Hydra starts.
"""

from __future__ import annotations

import errno
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("medtune.train")

GIB = 1024**3  # bytes in a GiB: the unit of every memory and disk figure medtune prints

# errors of a write that more space, another directory or other permissions would fix
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}
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


class RunDirCheck(Callback):
    """Stops the command (exit code 2, one line) when its run or sweep directory cannot be written."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Check hydra.run.dir before Hydra creates it and logs into it."""
        _check_or_exit(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Check hydra.sweep.dir before the first job."""
        _check_or_exit(config, "hydra.sweep.dir")


def _check_or_exit(config: DictConfig, key: str) -> None:
    try:
        target = OmegaConf.select(config, key)
    except Exception:  # an interpolation only Hydra can resolve later: it reports its own errors
        return
    if target is None:
        return
    try:
        check_writable(Path(str(target)), key)
    except StorageError as err:
        log.error("%s", err)
        sys.exit(2)  # SystemExit passes through Hydra's callback guard, which turns exceptions into warnings
