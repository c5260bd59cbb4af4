"""Resume continues only the run its checkpoint belongs to: the target is resolved once, every differing key is named,
safe ones are recorded, and the checkpoint loaded is the one that was checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from hydra import compose, initialize_config_dir

from medtune.config import ConfigError, register_configs, to_train_config
from medtune.training.checkpoint import resume
from medtune.training.errors import TrainingError

CONF = REPO / "medtune" / "conf"
register_configs()
BASE = ["model=tiny_llama", "trainer.max_steps=12", "trainer.save_every=1"]


def _cfg(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return to_train_config(compose("train", overrides=list(overrides)))


def _checkpoint(run_dir: Path, step: int, *overrides: str, world_size: int = 1, **extra: object) -> Path:
    """A checkpoint directory as save_checkpoint leaves it, as far as resuming reads it (state.json)."""
    path = run_dir / "checkpoints" / f"step_{step:06d}"
    path.mkdir(parents=True)
    record = resume.checkpoint_record(resume.run_identity(_cfg(*BASE, *overrides), world_size), None)
    state = {"data_position": {"epoch": 0, "batch": step}, "step": step, **record, **extra}
    (path / "state.json").write_text(json.dumps(state))
    return path


def test_changed_run_is_refused_with_every_key_both_values_and_the_way_out(tmp_path: Path) -> None:
    """The issue's case: ratio, seed, lr and max_steps changed on trainer.resume=auto."""
    point = _checkpoint(tmp_path, 12)
    changed = _cfg(
        *BASE, "trainer.max_steps=14", "data_mix.ratio=3:1", "seed=7", "optim.lr=0.01", "trainer.resume=auto"
    )
    with pytest.raises(resume.ResumeMismatch) as info:
        resume.plan_resume(changed, tmp_path, world_size=1)
    msg = str(info.value)
    assert isinstance(info.value, ConfigError)  # the entry point turns it into exit code 2
    assert str(point) in msg and "nothing was loaded" in msg
    for line in (
        'data_mix.ratio: checkpoint null, now "3:1"',
        "data_mix.weights.en: checkpoint 1.0, now 3.0",
        "seed: checkpoint 0, now 7",
        "optim.lr: checkpoint 0.0005, now 0.01",
        "trainer.max_steps: checkpoint 12, now 14 (the cosine schedule",
    ):
        assert line in msg, line
    assert "trainer.resume_allow=[data_mix.ratio,data_mix.weights,trainer.max_steps]" in msg
    assert "optim.lr" not in msg.split("trainer.resume_allow=")[1]  # restored from the checkpoint: no way to allow it


def test_operational_changes_pass_and_are_recorded(tmp_path: Path) -> None:
    point = _checkpoint(tmp_path, 12)
    cfg = _cfg(*BASE, "trainer.save_every=4", "trainer.log_every=2", "logger=jsonl", "trainer.resume=auto")
    plan = resume.plan_resume(cfg, tmp_path, world_size=1)
    assert plan is not None and plan.checkpoint == point and plan.step == 12
    assert plan.changes == {
        "logger.backend": ["wandb", "jsonl"],
        "trainer.log_every": [5, 2],
        "trainer.save_every": [1, 4],
    }
    summary = plan.summary()
    assert summary["run/resumed_at_step"] == 12 and summary["run/resumed_from"] == str(point)
    assert json.loads(summary["run/resume_changes"]) == [{"step": 12, "changes": plan.changes}]


def test_unchanged_resume_records_nothing_and_no_checkpoint_is_a_fresh_start(tmp_path: Path) -> None:
    assert resume.plan_resume(_cfg(*BASE, "trainer.resume=auto"), tmp_path, 1) is None
    _checkpoint(tmp_path, 3)
    plan = resume.plan_resume(_cfg(*BASE, "trainer.resume=auto"), tmp_path, 1)
    assert plan.changes == {} and "run/resume_changes" not in plan.summary()


def test_resume_allow_accepts_named_keys_and_groups_but_never_locked_ones(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 12)
    allowed = _cfg(*BASE, "trainer.max_steps=20", "data_mix.ratio=3:1", "trainer.resume=auto",
                   "trainer.resume_allow=[trainer.max_steps,data_mix]")  # fmt: skip
    plan = resume.plan_resume(allowed, tmp_path, 1)
    assert set(plan.changes) == {"trainer.max_steps", "data_mix.ratio", "data_mix.weights.en"}
    typo = _cfg(*BASE, "trainer.resume=auto", "trainer.resume_allow=[trainer.max_step]")
    with pytest.raises(ConfigError, match=r"trainer\.resume_allow names \['trainer\.max_step'\], which are not"):
        resume.plan_resume(typo, tmp_path, 1)
    locked = _cfg(*BASE, "optim.lr=0.01", "trainer.resume=auto", "trainer.resume_allow=[optim.lr]")
    with pytest.raises(
        resume.ResumeMismatch, match=r"optim\.lr: checkpoint 0.0005, now 0.01 \(the checkpoint restores"
    ):
        resume.plan_resume(locked, tmp_path, 1)


def test_world_size_is_part_of_the_run(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 4, world_size=2)
    with pytest.raises(resume.ResumeMismatch, match=r"sharding\.world_size: checkpoint 2, now 1"):
        resume.plan_resume(_cfg(*BASE, "trainer.resume=auto"), tmp_path, 1)


def test_max_steps_is_free_only_when_the_trained_steps_keep_their_lr(tmp_path: Path) -> None:
    constant = ["optim.schedule=constant", "optim.warmup_steps=2"]
    _checkpoint(tmp_path, 6, *constant)
    plan = resume.plan_resume(_cfg(*BASE, *constant, "trainer.max_steps=30", "trainer.resume=auto"), tmp_path, 1)
    assert plan.changes == {"trainer.max_steps": [12, 30]}  # same lr for steps 1-6: recorded, not refused
    ratio_warmup = ["optim.schedule=constant", "optim.warmup_ratio=0.5"]  # warmup = half the run: it moves
    other = tmp_path / "other"
    _checkpoint(other, 6, *ratio_warmup)
    with pytest.raises(resume.ResumeMismatch, match=r"trainer\.max_steps: checkpoint 12, now 30"):
        resume.plan_resume(_cfg(*BASE, *ratio_warmup, "trainer.max_steps=30", "trainer.resume=auto"), other, 1)
    with pytest.raises(ConfigError, match=r"trainer\.max_steps=5 is below the step of the checkpoint"):
        resume.plan_resume(_cfg(*BASE, *constant, "trainer.max_steps=5", "trainer.resume=auto"), tmp_path, 1)


def test_history_of_accepted_changes_travels_with_the_checkpoints(tmp_path: Path) -> None:
    earlier = [{"step": 4, "changes": {"trainer.max_steps": [8, 12]}}]
    _checkpoint(tmp_path, 6, resumes=earlier)
    plan = resume.plan_resume(_cfg(*BASE, "trainer.log_every=3", "trainer.resume=auto"), tmp_path, 1)
    lineage = [*earlier, {"step": 6, "changes": {"trainer.log_every": [5, 3]}}]
    assert plan.lineage() == lineage
    assert resume.checkpoint_record({"k": 1}, plan) == {"run_config": {"k": 1}, "resumes": lineage}


def test_bad_resume_target_and_old_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"trainer\.resume=.*no complete checkpoint"):
        resume.plan_resume(_cfg(*BASE, f"trainer.resume={tmp_path / 'nowhere'}"), tmp_path, 1)
    old = tmp_path / "checkpoints" / "step_000002"
    old.mkdir(parents=True)
    (old / "state.json").write_text(json.dumps({"step": 2, "data_position": {"epoch": 0, "batch": 2}}))
    plan = resume.plan_resume(_cfg(*BASE, "seed=3", "trainer.resume=auto"), tmp_path, 1)
    assert plan.verified is False and plan.summary()["run/resume_verified"] is False


def test_a_checkpoint_from_before_a_key_existed_resumes_with_what_it_meant(tmp_path: Path) -> None:
    """trainer.rms_norm came after checkpoints existed: its absence meant transformers' / Liger's norm ("kernels").
    Resuming with that is no change; with torch's op it is a change of the run, refused with both values."""
    point = _checkpoint(tmp_path, 4)
    state = json.loads((point / "state.json").read_text())
    del state["run_config"]["trainer.rms_norm"], state["run_config"]["lora.fused_base"]
    (point / "state.json").write_text(json.dumps(state))
    # trainer.rms_norm=auto is settled before the check (training.fast_paths.record_settled): "kernels" on a CPU
    plan = resume.plan_resume(_cfg(*BASE, "lora.fused_base=false", "trainer.rms_norm=kernels", "trainer.resume=auto"),
                              tmp_path, 1)  # fmt: skip
    assert plan.changes == {}
    with pytest.raises(resume.ResumeMismatch, match=r'trainer\.rms_norm: checkpoint "kernels", now "torch"'):
        resume.plan_resume(_cfg(*BASE, "lora.fused_base=false", "trainer.rms_norm=torch", "trainer.resume=auto"),
                           tmp_path, 1)  # fmt: skip
    with pytest.raises(resume.ResumeMismatch, match=r"lora\.fused_base: checkpoint false, now true"):
        resume.plan_resume(_cfg(*BASE, "trainer.resume=auto"), tmp_path, 1)  # its default changed the run


def test_data_changes_are_named_refused_and_accepted_only_when_allowed(tmp_path: Path) -> None:
    """Issue 32, item 2: the checkpoint's data fingerprint against the data loaded now."""
    saved = {"data.content.a:train": "1", "data.content.b:train": "2", "data.selected": "3"}
    point = tmp_path / "step_000004"

    def check(now: dict[str, str], *overrides: str, changes: dict | None = None) -> resume.ResumePlan:
        plan = resume.ResumePlan(point, 4, dict(changes or {}), [])
        resume.check_data(saved, now, _cfg(*BASE, "trainer.resume=auto", *overrides), plan)
        return plan

    assert check(saved).changes == {}
    rows = saved | {"data.content.b:train": "9", "data.selected": "8"}
    with pytest.raises(resume.ResumeMismatch) as err:
        check(rows)
    assert "\n" not in str(err.value) and "b:train (rows changed); the mix selected other rows" in str(err.value)
    assert "a:train" not in str(err.value) and "trainer.resume_allow=[data]" in str(err.value)
    with pytest.raises(resume.ResumeMismatch, match=r"changed since .* the mix selected other rows;"):
        check(saved | {"data.selected": "8"})  # nothing explains another selection
    assert check(rows, "trainer.resume_allow=[data]").lineage() == [
        {"step": 4, "changes": {"data.content.b:train": ["2", "9"], "data.selected": ["3", "8"]}}
    ]
    ratio = {"data_mix.ratio": ["1:1", "3:1"]}  # an accepted mix change explains the new selection, not new rows
    assert check(saved | {"data.selected": "8"}, changes=ratio).changes == ratio | {"data.selected": ["3", "8"]}
    with pytest.raises(resume.ResumeMismatch):
        check(saved | {"data.selected": "8"}, changes={"data.cache_dir": ["x", "y"]})  # free keys explain nothing
    assert "data.content.b:train" in check(rows, "trainer.resume_allow=[data.content.b:train]").changes


def test_resume_allow_knows_the_data_names_before_the_data_loads(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 2)
    for name in ("data", "data.content", "data.selected"):
        assert resume.plan_resume(_cfg(*BASE, "trainer.resume=auto", f"trainer.resume_allow=[{name}]"), tmp_path, 1)


def test_resume_target_must_exist(tmp_path: Path) -> None:
    for ok in ("never", "auto", str(tmp_path)):
        resume.check_target(ok)
    with pytest.raises(ConfigError, match=r"trainer\.resume='sometimes' is neither"):
        resume.check_target("sometimes")


def test_resume_point_resolution(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert resume.find_resume_point("auto", run) is None
    assert resume.find_resume_point("never", run) is None
    _checkpoint(run, 3)
    newest = _checkpoint(run, 7)
    (run / "checkpoints" / "step_000009.tmp-1").mkdir()  # half-written: never chosen
    assert resume.find_resume_point("auto", run) == newest
    assert resume.find_resume_point(str(run), tmp_path / "other") == newest
    assert resume.find_resume_point(str(run / "checkpoints" / "step_000003"), tmp_path / "other").name == "step_000003"
    with pytest.raises(ConfigError, match=r"trainer\.resume=.*no complete checkpoint"):
        resume.find_resume_point(str(tmp_path / "nothing"), run)


def test_the_checked_checkpoint_must_still_be_there_and_the_data_change_is_recorded(tmp_path: Path) -> None:
    point = _checkpoint(tmp_path, 2, data={"data.content.a:train": "1"})
    cfg = _cfg(*BASE, "trainer.resume=auto", "trainer.resume_allow=[data]")
    plan = resume.plan_resume(cfg, tmp_path, 1)
    record = resume.checkpoint_record(resume.run_identity(cfg, 1), plan)
    assert resume.check_before_load(point, tmp_path, {"data.content.a:train": "1"}, cfg, plan, record) == {}
    found = resume.check_before_load(point, tmp_path, {"data.content.a:train": "2"}, cfg, plan, record)
    accepted = [{"step": 2, "changes": {"data.content.a:train": ["1", "2"]}}]
    assert json.loads(found["run/resume_changes"]) == accepted and record["resumes"] == accepted
    (point / "state.json").unlink()  # another job's keep_checkpoints removed it after the check
    with pytest.raises(TrainingError, match=r"was checked at the start of this run and is gone now"):
        resume.check_before_load(point, tmp_path, {}, cfg, plan, record)


def test_the_resume_rules_load_without_torch() -> None:
    """The command checks the resume target before torch is imported: a wrong path costs a second, not a minute."""
    code = "import sys, medtune.training.checkpoint.resume; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=REPO)
