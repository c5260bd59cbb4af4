"""The local checkpoint (one process, DDP) round-trips the adapter, optimizer, scheduler and RNG; a half-written one
is never resumed."""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from medtune.files import space
from medtune.training.checkpoint import layout
from medtune.training.checkpoint.local import LocalCheckpointer
from medtune.training.checkpoint.resume import find_resume_point


def _toy() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)  # a frozen "base" weight: not saved
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    return model, opt, sched


def _train_one(model, opt, sched) -> None:
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def test_round_trip_restores_trainable_state_optimizer_scheduler_and_rng(tmp_path: Path) -> None:
    model, opt, sched = _toy()
    _train_one(model, opt, sched)
    saved = LocalCheckpointer().save(tmp_path, 1, model, opt, sched, {"data_position": {"epoch": 0, "batch": 3}}, 2)
    assert "0.weight" not in torch.load(saved / "trainable.pt")  # frozen weights stay out
    expected_next = torch.rand(5)
    torch.manual_seed(123)  # move the RNG away; loading must bring it back
    model2, opt2, sched2 = _toy()
    state = LocalCheckpointer().load(saved, model2, opt2, sched2)
    assert state == {"step": 1, "data_position": {"epoch": 0, "batch": 3}}
    assert torch.equal(model2[1].weight, model[1].weight)
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(torch.rand(5), expected_next)  # the RNG continues where it was saved


def test_keeps_only_the_newest_and_skips_partial(tmp_path: Path) -> None:
    model, opt, sched = _toy()
    for step in (1, 2, 3):
        LocalCheckpointer().save(tmp_path, step, model, opt, sched, {"data_position": {}}, keep=2)
    (tmp_path / "step_000004.tmp-999").mkdir()  # what a kill during a save leaves behind
    assert [p.name for p in layout.list_checkpoints(tmp_path)] == ["step_000002", "step_000003"]
    assert layout.remove_partial(tmp_path) == [tmp_path / "step_000004.tmp-999"]
    assert not (tmp_path / "step_000004.tmp-999").exists()


def test_loading_into_a_different_adapter_names_the_problem(tmp_path: Path) -> None:
    model, opt, sched = _toy()
    saved = LocalCheckpointer().save(tmp_path, 1, model, opt, sched, {"data_position": {}}, keep=1)
    other = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(KeyError, match="lora config"):
        LocalCheckpointer().load(saved, other, opt, sched)


def _fail_on_save(monkeypatch: pytest.MonkeyPatch, nth: int, error: Callable[[str], None]) -> None:
    """Let torch.save write `nth - 1` files, then fail the way a full disk does."""
    real_save, calls = torch.save, []

    def save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        calls.append(f)
        if len(calls) == nth:
            error(str(f))
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_disk_full_removes_the_partial_checkpoint_and_says_path_and_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, opt, sched = _toy()
    _train_one(model, opt, sched)
    root = tmp_path / "run" / "checkpoints"
    kept = LocalCheckpointer().save(root, 1, model, opt, sched, {"data_position": {}}, keep=2)

    def enospc(path: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    _fail_on_save(monkeypatch, 2, enospc)  # the optimizer file of step 2
    with pytest.raises(space.StorageError) as info:
        LocalCheckpointer().save(root, 2, model, opt, sched, {"data_position": {}}, keep=2)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"could not write checkpoint step_000002 to {root} (No space left on device [errno 28])" in msg
    assert re.search(r"it needs about [\d.]+ (B|KiB), [\d.]+ (KiB|MiB|GiB) free on that disk", msg), msg
    assert f"trainer.resume=auto hydra.run.dir={tmp_path / 'run'}" in msg
    assert sorted(p.name for p in root.iterdir()) == ["step_000001"]  # the partial directory is gone
    assert layout.list_checkpoints(root) == [kept]
    assert find_resume_point("auto", tmp_path / "run") == kept


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_zip_writer_error_of_a_full_device_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's zip writer reports ENOSPC as a chained RuntimeError; /dev/full produces exactly that."""
    model, opt, sched = _toy()
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: real_save(obj, "/dev/full", *a, **k))
    with pytest.raises(space.StorageError, match=r"could not write checkpoint step_000003 .*\(RuntimeError: "):
        LocalCheckpointer().save(tmp_path, 3, model, opt, sched, {"data_position": {}}, keep=2)
    assert list(tmp_path.iterdir()) == []


def test_a_partial_file_of_a_full_disk_is_closed_before_it_is_deleted(tmp_path: Path) -> None:
    """Issue 32.4: torch's zip writer kept the failed file open, so deleting the partial checkpoint freed nothing
    and the summary that followed found the disk still full."""
    from fixtures.small_disk import fill, small_disk

    model = torch.nn.Linear(256, 256)  # 257 KiB of trainable weights: more than the room left below
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    with small_disk(tmp_path / "disk", size="4m") as disk:
        fill(str(disk / "filler"), leave_bytes=128 * 1024)
        room = space.free_bytes(disk)
        with pytest.raises(space.StorageError) as info:
            LocalCheckpointer().save(disk / "checkpoints", 1, model, opt, sched, {}, keep=1)
        assert list((disk / "checkpoints").iterdir()) == []
        assert space.free_bytes(disk) >= room  # the partial's blocks came back
        held = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # the descriptor that listed the folder is gone by now
                held.append(os.readlink(f"/proc/self/fd/{fd}"))
        assert not [p for p in held if p.startswith(str(disk))], held
        # the zip writer's "unexpected pos" RuntimeError is not the message: the ENOSPC under it is
        assert "(No space left on device [errno 28])" in str(info.value)
