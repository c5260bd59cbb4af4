"""The run directory's record: config files that are never overwritten, metrics without repeated steps, a tracker.

    tracker, resumed, record, plan = open_record(cfg, dict_cfg, run_dir, dist)  # what training.run starts with

A run that resumes in its own directory keeps `config.yaml` as written at its start and writes this invocation's
config to `config.resume-<n>.yaml`; metrics.jsonl (and metrics.csv) lose the lines logged after the checkpoint's
step, since those steps run again. A sweep job that failed gets a summary.json even when it never started
(`write_failed_summary`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medtune.config import TrainConfig
from medtune.files.atomic import atomic_write_text
from medtune.files.space import StorageError, explain, reserve
from medtune.training import resume
from medtune.training.resume import ResumePlan
from medtune.training.tracking import build_tracker

log = logging.getLogger(__name__)
RESUME_CONFIG = re.compile(r"config\.resume-(\d+)\.yaml")


def open_record(
    cfg: TrainConfig, dict_cfg: DictConfig, run_dir: Path, dist: Any
) -> tuple[Any, dict, dict, ResumePlan | None]:
    """Check the resume target (a mismatch stops here: nothing loaded, nothing written), keep the record, start
    the tracker; returns the tracker, the summary's resume keys, what each checkpoint of the run stores and the
    resume plan (None: a fresh start), whose checkpoint is the one the run must load."""

    plan = resume.plan_resume(cfg, run_dir, dist.world_size)
    try:
        if dist.is_main:
            keep_record(run_dir, OmegaConf.to_yaml(dict_cfg, resolve=True), plan, cfg.trainer.resume)
            reserve(run_dir)  # room for summary.json (the command's start took it already; a sweep job takes it here)
        shown = original_config(run_dir, OmegaConf.to_container(dict_cfg, resolve=True), plan)
        tracker = build_tracker(cfg.logger, shown, run_dir, dist.rank, resume=plan is not None)
    except OSError as err:
        line = explain(err)
        if not line:
            raise
        log.error("the run cannot start its record: %s", line)
        raise StorageError(line) from err
    record = resume.checkpoint_record(resume.run_identity(cfg, dist.world_size), plan)
    return tracker, (plan.summary() if plan else {}), record, plan


def keep_record(run_dir: Path, config_yaml: str, plan: ResumePlan | None, resume_mode: str) -> Path:
    """Write this invocation's config beside (never over) the original; drop metric lines past the resume step."""
    run_dir.mkdir(parents=True, exist_ok=True)  # Hydra made it; a caller of training.run may not have
    path = run_dir / "config.yaml"
    if plan is not None and path.exists():
        taken = [int(m.group(1)) for p in run_dir.iterdir() if (m := RESUME_CONFIG.fullmatch(p.name))]
        path = run_dir / f"config.resume-{max(taken, default=0) + 1}.yaml"
    path.write_text(config_yaml)
    if resume_mode != "never":  # nothing found: a restart from step 0 replaces the earlier attempt's lines
        trim_metrics(run_dir, plan.step if plan else -1)
    return path


def original_config(run_dir: Path, current: dict[str, Any], plan: ResumePlan | None) -> dict[str, Any]:
    """The config a tracker should show: the run's original one when it continues in its own directory."""
    path = run_dir / "config.yaml"
    if plan is None or not path.is_file():
        return current
    return OmegaConf.to_container(OmegaConf.load(path))  # type: ignore[return-value]


def trim_metrics(run_dir: Path, last_step: int) -> int:
    """Drop metrics.jsonl / metrics.csv lines after `last_step` (and torn ones), atomically; returns lines dropped."""
    dropped = 0
    for name in ("metrics.jsonl", "metrics.csv"):
        path = run_dir / name
        if not path.is_file():
            continue
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        keep = [line for i, line in enumerate(lines) if _keep_line(name, i, line, last_step)]
        if len(keep) == len(lines):
            continue
        atomic_write_text(path, "".join(keep))  # a crash here leaves the old file or the new one, never half of one
        dropped += len(lines) - len(keep)
        log.info("%s: dropped %d line(s) after step %d; those steps run again", path, len(lines) - len(keep), last_step)
    return dropped


def _keep_line(name: str, index: int, line: str, last_step: int) -> bool:
    if not line.endswith("\n"):  # torn by a kill in mid-write
        return False
    if name.endswith(".csv"):
        if index == 0 and line.startswith("step,"):
            return True
        step_text = line.split(",", 1)[0]
        return step_text.lstrip("-").isdigit() and int(step_text) <= last_step
    try:
        return int(json.loads(line)["step"]) <= last_step
    except (ValueError, KeyError, TypeError):
        return False


def write_failed_summary(run_dir: Path, failure: dict[str, Any]) -> dict[str, Any]:
    """Merge `failure` (run/status, run/error, ...) into run_dir/summary.json, creating it; returns the summary."""
    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        summary = {}
    summary = summary | failure
    run_dir.mkdir(parents=True, exist_ok=True)
    # the watchdog's thread and the main one may both write it: each through its own temporary file
    atomic_write_text(path, json.dumps(summary, indent=1, sort_keys=True, default=str) + "\n")
    return summary
