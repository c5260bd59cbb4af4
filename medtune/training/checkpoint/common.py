"""What both checkpoint implementations share: RNG states, torch files closed on failure, the atomic commit and
pruning, and the one-line error of a write that failed.

A checkpoint is written into `step_000040.tmp-<pid>` (sharded: `.tmp-shared`) and renamed when complete, so a killed
run never leaves a directory that looks finished. A write that fails (full disk, no permission) closes and removes
its partial directory at once and raises a one-line `space.StorageError` with the space the checkpoint needs and
what is free then.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtune.files import space
from medtune.files.atomic import follow_umask
from medtune.training.checkpoint.layout import STATE_FILE, list_checkpoints

log = logging.getLogger(__name__)
RNG_FILE = "rng.pt"
SCHEDULER_FILE = "scheduler.pt"


def rng_state() -> dict[str, Any]:
    """Every RNG the loop draws from (python, numpy, torch CPU and CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore_rng(path: Path) -> None:
    """This rank's RNG state from `path` (a checkpoint of one process restores rank 0's on every rank)."""
    import torch.distributed as tdist

    saved = torch.load(path / RNG_FILE, map_location="cpu", weights_only=False)
    states = saved.get("ranks", [saved])  # written before per-rank states: one dict
    rank = tdist.get_rank() if tdist.is_initialized() else 0
    if rank >= len(states):
        log.warning(
            "%s holds RNG states of %d rank(s); rank %d keeps its own (dropout draws differ)", path, len(states), rank
        )
        return
    set_rng_state(states[rank])


def load_torch(path: Path) -> Any:
    """A tensor file of a checkpoint, on CPU, tensors only."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_torch(obj: Any, path: Path) -> None:
    """torch.save through a file this function closes, also when the write fails: a partial file left open by the
    failed zip writer would keep its blocks after the partial checkpoint is deleted, and the disk full."""
    with path.open("wb") as handle:
        torch.save(obj, handle)


def write_failed(
    tmp: Path,
    final: Path,
    err: BaseException,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    remove: bool = True,
) -> space.StorageError:
    """Remove the partial checkpoint (never resumed; its space is what the summary needs next), then say why."""
    if remove:  # under FSDP rank 0 owns the directory
        shutil.rmtree(tmp, ignore_errors=True)
    log.debug("checkpoint write into %s failed", tmp, exc_info=err)
    need = nbytes([p for p in model.parameters() if p.requires_grad]) + nbytes(optimizer.state_dict())
    run_dir = final.parent.parent
    fix = (
        "Earlier checkpoints are intact: free space (or lower trainer.keep_checkpoints), then resume with "
        f"trainer.resume=auto hydra.run.dir={run_dir}."
    )
    return space.write_failure(f"checkpoint {final.name}", final.parent, err, need, fix)


def nbytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) state."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(nbytes(v) for v in obj)
    return 0


def commit(tmp: Path, final: Path, state: dict[str, Any], keep: int, rng_states: list | None) -> None:
    """RNG (one state per rank: LoRA dropout draws differ by rank) and loop state, then the atomic rename and
    pruning to the newest `keep` (rank 0 only)."""
    ckpt_root = final.parent
    save_torch({"ranks": rng_states or [rng_state()]}, tmp / RNG_FILE)
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    follow_umask(tmp)  # torch.distributed.checkpoint's files too: a colleague may resume or read the run
    _fsync_dir(tmp)
    if final.exists():  # a re-run of the same step after resume: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(ckpt_root)
    for old in list_checkpoints(ckpt_root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint saved: %s", final)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
