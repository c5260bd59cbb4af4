"""Files that several processes (or threads) write at once: unique temporary names, atomic renames, file locks.

Every shared cache medtune writes (converted models, prepared data, base-model scores) and every record that two
threads may rewrite (summary.json) goes through here. A writer builds its entry under a name no other writer can
pick (`.<name>.tmp-<pid>-<random>`, in the entry's own directory so that the rename never crosses a file system),
then renames it into place: a reader sees the old entry, the new one, or none, never half of one; two writers never
trip over each other's temporary files. A lock next to the entry (`.<name>.lock`, `fcntl.flock`) lets the second of
two jobs wait for the first instead of redoing minutes of work:

    atomic_write_text(path, text)                          # a file
    with file_lock(entry):                                 # one writer at a time; the kernel frees it if we die
        if not complete(entry):                            # another job may have finished it while we waited
            with atomic_dir(entry, replace=True) as tmp:   # build in tmp; renamed to `entry` on success
                ...

Modes are 0o666 for files and 0o777 for directories, minus the umask (never tempfile's 0o600/0o700), so a group
shares a cache by running with `umask 002` under a setgid cache root (`chmod 2775`): new entries inherit its group.
Writers that create files this module does not open (safetensors writes 0o600 whatever the umask) pass the
result through `follow_umask`; `atomic_dir` does that for everything built in its temporary directory.

A writer holds an flock on its own temporary file or directory while it builds it. The next writer of the same
entry removes temporaries that nobody holds and that are older than STALE_AFTER_S (a killed conversion's folder),
so an interrupted write costs disk space only until the entry is written again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import logging
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

FILE_MODE = 0o666  # minus the umask
DIR_MODE = 0o777  # minus the umask; the setgid bit of a parent is inherited by the kernel
# File systems without flock (some network mounts): the lock only saves work, correctness comes from the renames.
_NO_LOCKING = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
# A temporary is created, then locked by its writer: one this old that nobody holds is left from a dead writer.
STALE_AFTER_S = 60.0


def temp_path(final: Path, kind: str = "tmp") -> Path:
    """A name next to `final` that no other process or thread will pick: `.<name>.<kind>-<pid>-<random>`."""
    final = Path(final)
    return final.parent / f".{final.name}.{kind}-{os.getpid()}-{secrets.token_hex(6)}"


def lock_path(entry: Path) -> Path:
    """The lock file of a cache entry: `.<name>.lock` in the same directory (kept; deleting it would race)."""
    entry = Path(entry)
    return entry.parent / f".{entry.name}.lock"


def current_umask() -> int:
    """This process's umask, read without changing it (Linux: /proc; elsewhere set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: Path) -> None:
    """Give `path` (a file, or a directory and all it holds) the modes a plain open/mkdir would: 0o666 / 0o777 minus
    the umask (execute bits kept where set); a directory's setgid bit stays."""
    mask = current_umask()
    path = Path(path)
    paths = [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]
    for item in paths:
        info = item.lstat()
        if stat.S_ISLNK(info.st_mode):
            continue
        executable = stat.S_ISDIR(info.st_mode) or info.st_mode & 0o111
        mode = ((DIR_MODE if executable else FILE_MODE) & ~mask) | (info.st_mode & stat.S_ISGID)
        if stat.S_IMODE(info.st_mode) != mode:
            os.chmod(item, mode)


def _hold(fd: int) -> None:
    """Lock a temporary this writer builds, so that the next writer knows it is alive (see reclaim_stale)."""
    with contextlib.suppress(OSError):  # no flock here: the temporary is simply never reclaimed
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def reclaim_stale(final: Path) -> list[Path]:
    """Remove temporaries of `final` (`.<name>.tmp-*`, `.<name>.old-*`) left by dead writers; returns them."""
    final = Path(final)
    gone = []
    left = [p for kind in ("tmp", "old") for p in final.parent.glob(f".{glob.escape(final.name)}.{kind}-*")]
    for path in left:
        try:
            if time.time() - path.lstat().st_mtime < STALE_AFTER_S:
                continue
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while its writer lives
        except OSError:
            continue
        else:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            gone.append(path)
            log.info("removed %s, left by an interrupted writer", path)
        finally:
            os.close(fd)
    return gone


def _write_through_temp(path: Path, fill: Callable[[BinaryIO], None]) -> None:
    """Create a unique temporary file next to `path`, let `fill` write it, fsync, and rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    reclaim_stale(path)
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        _hold(fd)
        with os.fdopen(fd, "wb") as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())  # the rename must never publish a name whose data is still in flight
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:
            err.filename = str(path)  # a failed write names no file: the message must name this one, not the cwd
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a unique temporary file and an atomic rename."""
    _write_through_temp(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` through a unique temporary file and an atomic rename."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy the file `src` to `dst` through a unique temporary file and an atomic rename."""
    with Path(src).open("rb") as source:
        _write_through_temp(dst, lambda handle: shutil.copyfileobj(source, handle, 1 << 20))


def _publish(tmp: Path, final: Path, replace: bool) -> None:
    """Rename the finished directory `tmp` to `final`; an existing `final` is replaced or (replace=False) kept."""
    moved_aside: list[Path] = []
    try:
        for _ in range(100):
            try:
                os.rename(tmp, final)
                return
            except OSError as err:
                if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            if not replace:  # another writer published an entry for the same key first: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
                return
            # A directory cannot be renamed onto a non-empty one: move the old entry aside (deleted once the new
            # one is in place, so that the name is missing for two renames only), then rename again.
            old = temp_path(final, "old")
            with contextlib.suppress(FileNotFoundError):
                os.rename(final, old)
                moved_aside.append(old)
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(errno.EBUSY, f"could not rename {tmp} to {final}: other writers kept replacing it")
    finally:
        for old in moved_aside:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: Path, replace: bool = False) -> Iterator[Path]:
    """A fresh temporary directory next to `final`, renamed to `final` when the block ends without an error.

    On an error the temporary directory is removed and `final` is untouched. If `final` exists by then, it is
    replaced when `replace` (hold `file_lock(final)` so that no other writer replaces it at the same time), else
    kept and this writer's copy dropped (for entries keyed by their content: the two are the same).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    reclaim_stale(final)
    tmp = temp_path(final)
    os.mkdir(tmp, DIR_MODE)
    held = os.open(tmp, os.O_RDONLY)
    try:
        _hold(held)
        try:
            yield tmp
            follow_umask(tmp)  # files written by other libraries (safetensors: 0o600) get the umask's modes
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _publish(tmp, final, replace)
    finally:
        os.close(held)


def _open_lock(path: Path) -> int | None:
    """A descriptor on the lock file (read-only suffices for flock); None when it cannot be created."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDONLY | os.O_CREAT, FILE_MODE)
    except OSError as err:  # a read-only cache: nobody can write the entry, so there is nothing to wait for
        log.debug("no lock %s (%s): going on without it", path, err)
        return None


@contextlib.contextmanager
def file_lock(entry: Path, shared: bool = False) -> Iterator[None]:
    """Hold the lock of a cache entry: exclusive for a writer, shared for a reader that must not see a swap.

    Waits (logging once) while another process holds it. Where locking is impossible (a read-only cache, a file
    system without flock) the block runs unlocked: the atomic renames keep the entry whole, only work may repeat.
    """
    path = lock_path(entry)
    fd = _open_lock(path)
    if fd is None:
        yield
        return
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process that is writing %s (lock %s)", entry, path)
            fcntl.flock(fd, mode)
        except OSError as err:
            if err.errno not in _NO_LOCKING:
                raise
            log.warning("cannot lock %s (%s): going on without the lock", path, err)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the flock
