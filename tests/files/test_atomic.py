"""files.atomic: concurrent writers never fail or mix, readers never see half a file, locks exclude, modes share."""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures import cache_writers
from fixtures.race import race

from medtune.files import atomic as cachefs
from medtune.files.atomic import atomic_copy, atomic_dir, atomic_write_text, file_lock, temp_path

TRIALS = 20


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


@pytest.mark.timeout(120)
def test_two_processes_writing_one_file_never_fail_nor_mix(tmp_path: Path) -> None:
    result = race(cache_writers.bytes_writer, tmp_path, trials=TRIALS, reader=cache_writers.bytes_reader)
    assert result.errors == [] and result.bad_reads == []
    assert result.complete_reads > 0  # the reader did look at the file while it was being replaced
    payloads = {cache_writers.payload(0), cache_writers.payload(1)}
    for trial in range(TRIALS):
        folder = tmp_path / f"trial_{trial:03d}"
        assert (folder / "entry.bin").read_bytes() in payloads
        assert _leftovers(folder) == []


@pytest.mark.timeout(120)
def test_file_lock_excludes_another_process(tmp_path: Path) -> None:
    locked = race(cache_writers.counter_writer, tmp_path / "locked", trials=2)
    assert locked.errors == []
    assert [int((tmp_path / "locked" / f"trial_{t:03d}" / "counter").read_text()) for t in range(2)] == [50, 50]
    # the same read-modify-write without the lock goes wrong, so the check above can fail: it loses updates (both
    # read one value), or two truncating writes overlap ("12" then "3" over it reads 32: a count above 50, seen once)
    unlocked = race(functools.partial(cache_writers.counter_writer, locked=False), tmp_path / "unlocked", trials=2)
    assert unlocked.errors == []
    counts = [int((tmp_path / "unlocked" / f"trial_{t:03d}" / "counter").read_text() or 0) for t in range(2)]
    assert any(count != 50 for count in counts), counts


def test_temporary_names_are_unique_hidden_and_beside_the_entry(tmp_path: Path) -> None:
    names = {temp_path(tmp_path / "entry.json") for _ in range(100)}
    assert len(names) == 100
    assert all(p.parent == tmp_path and p.name.startswith(".entry.json.tmp-") for p in names)
    assert f"-{os.getpid()}-" in next(iter(names)).name


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o002, 0o664, 0o775), (0o022, 0o644, 0o755)])
def test_modes_follow_the_umask_and_let_the_group_read(tmp_path: Path, mask: int, file_mode: int, dir_mode: int):
    with umask(mask):
        atomic_write_text(tmp_path / "a.txt", "a")
        atomic_copy(tmp_path / "a.txt", tmp_path / "b.txt")
        with atomic_dir(tmp_path / "entry") as tmp:
            (tmp / "weights.bin").write_bytes(b"w")
        with file_lock(tmp_path / "entry"):
            pass
    assert _mode(tmp_path / "a.txt") == _mode(tmp_path / "b.txt") == file_mode  # not tempfile's 0o600
    assert _mode(tmp_path / "entry") == dir_mode  # not tempfile's 0o700
    assert _mode(tmp_path / "entry" / "weights.bin") == file_mode
    assert _mode(tmp_path / ".entry.lock") == file_mode


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    atomic_write_text(tmp_path / "summary.json", "old")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cachefs.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        atomic_write_text(tmp_path / "summary.json", "new")
    assert (tmp_path / "summary.json").read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_atomic_dir_publishes_whole_or_not_at_all(tmp_path: Path) -> None:
    final = tmp_path / "entry"
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "half.bin").write_bytes(b"h")
        raise RuntimeError("killed mid-write")
    assert not final.exists() and _leftovers(tmp_path) == []
    with atomic_dir(final) as tmp:
        (tmp / "v").write_text("1")
    with atomic_dir(final) as tmp:  # another writer's copy of an existing entry is dropped, the entry kept
        (tmp / "v").write_text("2")
    assert (final / "v").read_text() == "1"
    with atomic_dir(final, replace=True) as tmp:  # a stale entry is swapped out whole
        (tmp / "v").write_text("3")
    assert [p.name for p in final.iterdir()] == ["v"] and (final / "v").read_text() == "3"
    assert _leftovers(tmp_path) == []


def test_a_lock_that_cannot_be_created_does_not_stop_the_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A read-only shared cache: nobody can write the entry there, so reading it goes on without a lock."""
    real_open = os.open

    def refuse_locks(path: object, *args: object, **kwargs: object) -> int:
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(cachefs.os, "open", refuse_locks)
    ran = False
    with file_lock(tmp_path / "entry", shared=True):
        ran = True
    assert ran and not (tmp_path / ".entry.lock").exists()


# /bin/sh, not this Python: another user cannot enter /root, where the test's interpreter may live
READ_ALL = 'n=0; for f; do cat "$f" > /dev/null || exit 1; n=$((n+1)); done; echo read $n'


@contextlib.contextmanager
def group_folder(group: str = "users") -> Iterator[tuple[Path, int]]:
    """A folder outside pytest's private tmp (which others cannot enter), owned by `group`, setgid, 0o2775."""
    import grp
    import shutil
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("needs root to give a folder to a group and to read as another user")
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        pytest.skip(f"no group {group!r}")
    folder = Path(tempfile.mkdtemp(prefix="medtune-shared-", dir="/tmp"))
    try:
        os.chown(folder, 0, gid)
        folder.chmod(0o2775)
        yield folder, gid
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _read_as_another_user(paths: list[Path], gid: int) -> subprocess.CompletedProcess:
    """Read every file as uid/gid 65534 (nobody) with `gid` as a supplementary group: a colleague in the group."""

    def become_colleague() -> None:
        os.setgroups([gid])
        os.setgid(65534)
        os.setuid(65534)

    cmd = ["/bin/sh", "-c", READ_ALL, "sh", *map(str, paths)]
    return subprocess.run(cmd, preexec_fn=become_colleague, capture_output=True, text=True, timeout=60, cwd="/")


@pytest.mark.timeout(300)
def test_a_colleague_in_the_group_reads_converted_models_adapters_and_checkpoints() -> None:
    """Issue 32.3: under umask 002 in a setgid folder, safetensors files were 0o600 whatever the umask, so a
    colleague found conversion.json valid and then could not read the weights."""
    import torch
    from conftest import tiny_model
    from peft import LoraConfig, get_peft_model

    from medtune.models.gguf import ensure_converted
    from medtune.models.lora import save_adapter
    from medtune.training.checkpoint.local import LocalCheckpointer

    with group_folder() as (shared, gid), umask(0o002):
        gguf = shared / "model.gguf"
        gguf.write_bytes(b"gguf")

        def convert(source: Path, folder: Path) -> dict:
            tiny_model().save_pretrained(folder)  # the safetensors writer, as the real conversion calls it
            return {"passed": True}

        converted = ensure_converted("tiny", shared / "models", gguf, convert=convert)
        model = get_peft_model(tiny_model(), LoraConfig(r=2, target_modules=["q_proj"]))
        adapter = save_adapter(model, shared / "run" / "adapter")
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
        ckpt = LocalCheckpointer().save(shared / "run" / "checkpoints", 1, model, opt, sched, {}, keep=1)
        files = [p for folder in (converted, adapter, ckpt) for p in folder.rglob("*") if p.is_file()]
        names = {p.name for p in files}
        assert {"model.safetensors", "conversion.json", "adapter_model.safetensors", "trainable.pt"} <= names
        for path in files:
            info = path.stat()
            assert (_mode(path), info.st_gid) == (0o664, gid), path
        for folder in (converted, adapter, ckpt):
            assert _mode(folder) == 0o2775 and folder.stat().st_gid == gid, folder
        done = _read_as_another_user(files, gid)
        assert done.returncode == 0 and done.stdout.strip() == f"read {len(files)}", done.stderr[-2000:]


KILLED_WRITER = (
    "import sys, time\nfrom pathlib import Path\nfrom medtune.files.atomic import atomic_dir\n"
    "with atomic_dir(Path(sys.argv[1])) as tmp:\n"
    "    (tmp / 'model.safetensors').write_bytes(bytes(1000))\n    print('writing', flush=True)\n    time.sleep(600)\n"
)


def _writer_inside(entry: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(entry)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    return proc


@pytest.mark.timeout(120)
def test_the_next_writer_removes_a_killed_writers_temporary_and_keeps_a_live_ones(tmp_path: Path) -> None:
    """Issue 32.3: a killed conversion left its `.tmp-*` folder forever."""
    entry = tmp_path / "converted"
    killed, live = _writer_inside(entry), _writer_inside(entry)
    try:
        killed.kill()
        killed.wait(timeout=30)
        old = time.time() - getattr(cachefs, "STALE_AFTER_S", 60.0) - 1  # both look old: the lock tells them apart
        for tmp in tmp_path.glob(".converted.tmp-*"):
            os.utime(tmp, (old, old))
        with atomic_dir(entry) as tmp:
            (tmp / "model.safetensors").write_bytes(b"new")
        left = _leftovers(tmp_path)
        assert left == [n for n in left if f"-{live.pid}-" in n] and len(left) == 1, left
    finally:
        live.kill()
        live.wait(timeout=30)
    (leftover,) = tmp_path.glob(".converted.tmp-*")
    os.utime(leftover, (old, old))
    atomic_write_text(tmp_path / "other.json", "{}")  # a writer of another entry leaves it alone
    assert _leftovers(tmp_path) == [leftover.name]
    with atomic_dir(entry, replace=True) as tmp:
        pass
    assert _leftovers(tmp_path) == []
