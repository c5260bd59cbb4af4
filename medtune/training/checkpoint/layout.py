"""Where checkpoints lie in a run directory, and which of them are complete; no torch, so resume's checks read it
before anything heavy loads.

    <run_dir>/checkpoints/step_000040/state.json      # complete: renamed from step_000040.tmp-<pid> when written
    <run_dir>/checkpoints/step_000040/sharded/        # only in a checkpoint of FSDP (every rank's shard)
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
STATE_FILE = "state.json"  # the loop state, written last: a directory without it is not a checkpoint
SHARDED_DIR = "sharded"  # torch.distributed.checkpoint's files of a sharded checkpoint


def step_dir(ckpt_root: Path, step: int) -> Path:
    """The directory of step `step`'s checkpoint under ckpt_root."""
    return ckpt_root / f"step_{step:06d}"


def is_sharded(path: Path) -> bool:
    """True for a checkpoint written by every rank of an FSDP run (ShardedCheckpointer)."""
    return (path / SHARDED_DIR).is_dir()


def read_state(path: Path) -> dict[str, Any]:
    """The loop state of the checkpoint at `path` (step, data position, run config, resumes, data fingerprint)."""
    return json.loads((path / STATE_FILE).read_text())


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a directory counts only once renamed from .tmp)."""
    if not ckpt_root.is_dir():
        return []
    done = [p for p in ckpt_root.glob("step_*") if ".tmp-" not in p.name and (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def remove_partial(ckpt_root: Path) -> list[Path]:
    """Delete half-written checkpoints left by a killed run; returns what was removed."""
    partial = list(ckpt_root.glob("step_*.tmp-*")) if ckpt_root.is_dir() else []
    for p in partial:
        shutil.rmtree(p, ignore_errors=True)
        log.warning("removed a half-written checkpoint: %s", p)
    return partial
