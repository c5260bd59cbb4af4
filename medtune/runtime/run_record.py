"""The run directory's record: config files that are never overwritten, metrics without repeated steps, a tracker.

    tracker = open_record(cfg, dict_cfg, run_dir, dist, resumed_step)   # what training.run starts with
    write_config(run_dir, dict_cfg, dist)                                # a command that never resumes (evaluate)

A run that resumes in its own directory keeps `config.yaml` as written at its start and writes this invocation's
config to `config.resume-<n>.yaml`; metrics.jsonl (and metrics.csv) lose the lines logged after the checkpoint's
step, since those steps run again. Which checkpoint a run resumes from is training's rule
(training/checkpoint/resume.py); this module is told its step. A sweep job that failed gets a summary.json even when
it never started (`write_failed_summary`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from medtune.config import TrainConfig
from medtune.files.atomic import atomic_write_text
from medtune.files.space import StorageError, explain, reserve
from medtune.runtime.tracking import build_tracker

if TYPE_CHECKING:  # torch: not imported before the config is checked
    from medtune.runtime.process_group import DistInfo

log = logging.getLogger(__name__)
RESUME_CONFIG = re.compile(r"config\.resume-(\d+)\.yaml")


def open_record(cfg: TrainConfig, dict_cfg: DictConfig, run_dir: Path, dist: DistInfo, resumed_step: int | None) -> Any:
    """Keep the record (rank 0) and start the tracker; `resumed_step`: the step of the checkpoint the run continues
    from (None: a fresh start). A full or unwritable disk is one line (StorageError), nothing half-written."""
    try:
        if dist.is_main:
            keep_record(run_dir, OmegaConf.to_yaml(dict_cfg, resolve=True), resumed_step, cfg.trainer.resume)
            reserve(run_dir)  # room for summary.json (the command's start took it already; a sweep job takes it here)
        shown = original_config(run_dir, OmegaConf.to_container(dict_cfg, resolve=True), resumed_step)
        return build_tracker(cfg.logger, shown, run_dir, dist.rank, resume=resumed_step is not None)
    except OSError as err:
        line = explain(err)
        if not line:
            raise
        log.error("the run cannot start its record: %s", line)
        raise StorageError(line) from err


def write_config(run_dir: Path, dict_cfg: DictConfig, dist: DistInfo) -> None:
    """The composed config as the run used it (resolved), written by rank 0 to run_dir/config.yaml."""
    if dist.is_main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(dict_cfg, resolve=True))


def keep_record(run_dir: Path, config_yaml: str, resumed_step: int | None, resume_mode: str) -> Path:
    """Write this invocation's config beside (never over) the original; drop metric lines past the resume step."""
    run_dir.mkdir(parents=True, exist_ok=True)  # Hydra made it; a caller of training.run may not have
    path = run_dir / "config.yaml"
    if resumed_step is not None and path.exists():
        taken = [int(m.group(1)) for p in run_dir.iterdir() if (m := RESUME_CONFIG.fullmatch(p.name))]
        path = run_dir / f"config.resume-{max(taken, default=0) + 1}.yaml"
    path.write_text(config_yaml)
    if resume_mode != "never":  # nothing found: a restart from step 0 replaces the earlier attempt's lines
        trim_metrics(run_dir, -1 if resumed_step is None else resumed_step)
    return path


def original_config(run_dir: Path, current: dict[str, Any], resumed_step: int | None) -> dict[str, Any]:
    """The config a tracker should show: the run's original one when it continues in its own directory."""
    path = run_dir / "config.yaml"
    if resumed_step is None or not path.is_file():
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
