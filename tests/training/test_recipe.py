"""Failure paths of the loop name what happened and what to change; the schedule does what the config says."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import REPO
from hydra import compose, initialize_config_dir

from medtune.config import register_configs, to_train_config
from medtune.runtime.process_group import DistInfo
from medtune.training.optim import build_scheduler
from medtune.training.recipe import TrainingError, TrainRecipe, out_of_memory_hint

CONF = REPO / "medtune" / "conf"
register_configs()


def _cfg(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return to_train_config(compose("train", overrides=list(overrides)))


def test_out_of_memory_names_the_phase_and_the_knobs() -> None:
    cfg = _cfg("trainer.micro_batch_size=8", "packing=packed")
    match = r"training step 3 \(8 x 2048 tokens"
    with pytest.raises(TrainingError, match=match) as info, out_of_memory_hint(cfg, "training step 3"):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    for knob in ("trainer.micro_batch_size", "trainer.grad_accum_steps", "quantization=nf4", "medtune.memory"):
        assert knob in str(info.value)


def test_non_finite_loss_stops_with_the_step_and_last_checkpoint(tmp_path: Path) -> None:
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    recipe = TrainRecipe(_cfg(), tmp_path, tracker=None, dist=dist)  # nothing is loaded: only the check runs
    recipe.step = 41
    with pytest.raises(TrainingError, match=r"non-finite loss at step 42; last good checkpoint: none"):
        recipe._check_finite(torch.tensor(float("nan")), 1.0)
    with pytest.raises(TrainingError, match="gradient norm"):
        recipe._check_finite(torch.tensor(1.0), float("inf"))


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedule_warms_up_then_decays_to_the_floor(schedule: str) -> None:
    cfg = _cfg("trainer.max_steps=100", "optim.warmup_steps=10", f"optim.schedule={schedule}", "optim.lr=1.0")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(cfg.optim, cfg.trainer.max_steps, opt)
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[5] < lrs[10] == pytest.approx(1.0)
    floor = 1.0 if schedule == "constant" else cfg.optim.min_lr_ratio
    assert lrs[-1] == pytest.approx(floor, abs=0.02)


def test_held_out_loss_inside_training_keeps_the_train_memory_phase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """eval_every during training must not restart the train phase's peak (nor empty the allocator each time)."""
    from medtune.runtime import peak_memory as metrics

    monkeypatch.setenv("MEDTUNE_CACHE_DIR", str(tmp_path / "cache"))
    resets: list[bool] = []
    monkeypatch.setattr(metrics, "reset_peak_memory", lambda d, release_cache=False: resets.append(release_cache))

    class Tracker:
        def log(self, *args: object, **kwargs: object) -> None:
            pass

    tiny = ["model=tiny_llama", "trainer.device=cpu", "trainer.progress_bar=false", "packing.max_seq_len=1024"]
    cfg = _cfg(*tiny, "trainer.max_steps=4", "trainer.eval_every=1", "eval=none")
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    recipe = TrainRecipe(cfg, tmp_path / "run", tracker=Tracker(), dist=dist)
    recipe.setup()
    assert resets == [True]  # loading starts a job: cached blocks released
    out = recipe.train()
    assert resets == [True, False] and recipe.step == 4  # one train phase, four held-out evaluations inside it
    assert "sys/train/cpu_rss_gib" in out
    assert "sys/eval/cpu_rss_gib" in recipe.eval_loss() and resets[-1] is False


def test_disk_full_at_a_checkpoint_ends_in_one_line_and_a_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """ENOSPC in the second checkpoint: no partial checkpoint, summary.json written, no traceback at error level."""
    import errno
    import json
    import logging
    import os

    from medtune.files import space
    from medtune.training.run import run

    monkeypatch.setenv("MEDTUNE_CACHE_DIR", str(tmp_path / "cache"))
    real_save, calls = torch.save, []

    def save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        calls.append(f)
        if len(calls) == 5:  # step 1 writes four files (weights, optimizer, scheduler, RNG); step 2 fails at once
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    tiny = ["model=tiny_llama", "trainer.device=cpu", "trainer.progress_bar=false", "packing.max_seq_len=1024"]
    overrides = [*tiny, "trainer.max_steps=2", "trainer.save_every=1", "eval=none", "logger=jsonl"]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        dict_cfg = compose("train", overrides=overrides)
    run_dir = tmp_path / "run"
    run_dir.mkdir()  # Hydra makes it
    with caplog.at_level(logging.DEBUG), pytest.raises(space.StorageError):
        run(to_train_config(dict_cfg), dict_cfg, run_dir, multirun=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run/status"] == "failed" and summary["run/failed_phase"] == "checkpoint"
    assert "No space left on device" in summary["run/error"] and "free on that disk" in summary["run/error"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_000001"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0].getMessage() and errors[0].exc_info is None
    assert "could not write checkpoint step_000002" in errors[0].getMessage()
    assert any(r.levelno == logging.DEBUG and r.exc_info for r in caplog.records)  # the traceback, for debugging


def test_the_run_loads_the_checkpoint_that_was_checked_not_a_newer_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resuming checks one checkpoint against the config before anything loads (run_record.open_record); if another
    job writes a newer one into the run directory meanwhile, the run still loads the checked one, and if the checked
    one is gone it stops naming it instead of loading something unchecked."""
    import shutil

    monkeypatch.setenv("MEDTUNE_CACHE_DIR", str(tmp_path / "cache"))

    class Tracker:
        def log(self, *args: object, **kwargs: object) -> None:
            pass

    tiny = ["model=tiny_llama", "trainer.device=cpu", "trainer.progress_bar=false", "packing.max_seq_len=1024"]
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    run_dir = tmp_path / "run"
    first = TrainRecipe(
        _cfg(*tiny, "trainer.max_steps=2", "trainer.save_every=1", "eval=none"), run_dir, Tracker(), dist
    )
    first.setup()
    first.train()
    checked, newer = run_dir / "checkpoints" / "step_000001", run_dir / "checkpoints" / "step_000002"
    assert checked.is_dir() and newer.is_dir()  # step 2 stands for a checkpoint written after the check

    cfg = _cfg(*tiny, "trainer.max_steps=3", "trainer.resume=auto", "eval=none")
    again = TrainRecipe(cfg, run_dir, Tracker(), dist)
    again.resume_from = checked
    again.setup()
    assert again.step == 1 and again.data_position["batch"] == 1

    shutil.rmtree(checked)
    gone = TrainRecipe(cfg, run_dir, Tracker(), dist)
    gone.resume_from = checked
    with pytest.raises(TrainingError, match=r"step_000001 was checked at the start of this run and is gone now"):
        gone.setup()


def test_no_held_out_batches_means_no_held_out_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """trainer.eval_batches=0 ("no held-out loss") ended a finished run in an IndexError (seen on an H200 run of
    the paper's command); now training ends with no eval/loss at all."""
    monkeypatch.setenv("MEDTUNE_CACHE_DIR", str(tmp_path / "cache"))

    class Tracker:
        def log(self, *args: object, **kwargs: object) -> None:
            pass

    tiny = ["model=tiny_llama", "trainer.device=cpu", "trainer.progress_bar=false", "packing.max_seq_len=1024"]
    cfg = _cfg(*tiny, "trainer.max_steps=2", "trainer.eval_batches=0", "trainer.eval_every=1", "eval=none")
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    recipe = TrainRecipe(cfg, tmp_path / "run", tracker=Tracker(), dist=dist)
    recipe.setup()
    out = recipe.train()
    assert recipe.step == 2 and "eval/loss" not in out
    assert recipe.eval_loss() == {} and recipe.data.heldout_batches() == []
