"""Resumable checkpoints: trainable weights, optimizer, scheduler, data position and RNG, written atomically.

Layout: `<run_dir>/checkpoints/step_000040/{trainable.pt, optimizer.pt, scheduler.pt, state.json}`. A checkpoint
is written into `step_000040.tmp-<pid>` and renamed when complete, so a killed run never leaves a directory that
looks finished; leftovers named `*.tmp-*` are removed on the next start. Only trainable tensors (the adapter) are
saved: the frozen base is rebuilt from its config, which keeps a checkpoint of a 4B QLoRA run to megabytes.
A write that fails (full disk, no permission) closes and removes its partial directory at once and raises a one-line
`space.StorageError` with the space the checkpoint needs and what is free then. state.json also carries what the
caller passes in the loop state: the run's config and resume history (see medtune/training/resume.py).
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

log = logging.getLogger(__name__)
STATE_FILE = "state.json"


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


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (LoRA adapters), by name, on CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    ckpt_root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loop_state: dict[str, Any],
    keep: int,
    rng_states: list[dict[str, Any]] | None = None,
) -> Path:
    """Write step `step` atomically under ckpt_root and keep the newest `keep` checkpoints.

    `rng_states`: every rank's RNG state, in rank order (DDP: rank 0 writes for all); default: this process's.
    """
    final = ckpt_root / f"step_{step:06d}"
    tmp = ckpt_root / f"{final.name}.tmp-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _save(trainable_state(model), tmp / "trainable.pt")
        _save(optimizer.state_dict(), tmp / "optimizer.pt")
        _save(scheduler.state_dict(), tmp / "scheduler.pt")
        _finish(tmp, final, ckpt_root, loop_state | {"step": step}, keep, rng_states)
    except (OSError, RuntimeError) as err:  # torch's zip writer reports a full disk as RuntimeError
        raise _write_failed(tmp, final, err, model, optimizer) from err
    return final


def _save(obj: Any, path: Path) -> None:
    """torch.save through a file this function closes, also when the write fails: a partial file left open by the
    failed zip writer would keep its blocks after the partial checkpoint is deleted, and the disk full."""
    with path.open("wb") as handle:
        torch.save(obj, handle)


def _write_failed(
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
    need = _nbytes([p for p in model.parameters() if p.requires_grad]) + _nbytes(optimizer.state_dict())
    run_dir = final.parent.parent
    fix = (
        "Earlier checkpoints are intact: free space (or lower trainer.keep_checkpoints), then resume with "
        f"trainer.resume=auto hydra.run.dir={run_dir}."
    )
    return space.write_failure(f"checkpoint {final.name}", final.parent, err, need, fix)


def _nbytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) state."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_nbytes(v) for v in obj)
    return 0


def _finish(tmp: Path, final: Path, ckpt_root: Path, state: dict[str, Any], keep: int, rng_states: list | None) -> None:
    """RNG (one state per rank: LoRA dropout draws differ by rank) and loop state, then the atomic rename and
    pruning (rank 0 only)."""
    _save({"ranks": rng_states or [rng_state()]}, tmp / "rng.pt")
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


def save_sharded_checkpoint(
    ckpt_root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loop_state: dict[str, Any],
    keep: int,
    rng_states: list[dict[str, Any]] | None = None,
) -> Path:
    """Every rank writes its shard of the trainable weights and optimizer state (torch.distributed.checkpoint);
    rank 0 writes the rest, with `rng_states` (every rank's, in rank order)."""
    import torch.distributed as tdist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    final = ckpt_root / f"step_{step:06d}"
    tmp = ckpt_root / f"{final.name}.tmp-shared"
    rank0 = tdist.get_rank() == 0
    try:
        if rank0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        tdist.barrier()
        dcp.save(_sharded_state(model, optimizer), checkpoint_id=str(tmp / "sharded"))
        if rank0:
            _save(scheduler.state_dict(), tmp / "scheduler.pt")
            _finish(tmp, final, ckpt_root, loop_state | {"step": step, "sharded": True}, keep, rng_states)
    except (OSError, RuntimeError, CheckpointException) as err:  # dcp raises CheckpointException on every rank
        raise _write_failed(tmp, final, err, model, optimizer, remove=rank0) from err
    tdist.barrier()
    return final


def _sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    weights = {k: v for k, v in get_model_state_dict(model).items() if k in trainable}
    return {"model": weights, "optim": get_optimizer_state_dict(model, optimizer)}


def load_sharded_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict:
    """Counterpart of save_sharded_checkpoint; every rank loads its shard."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    state = _sharded_state(model, optimizer)
    dcp.load(state, checkpoint_id=str(path / "sharded"))
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=False))
    set_optimizer_state_dict(model, optimizer, state["optim"])
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True))
    _restore_rng(path)
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


def find_resume_point(resume: str, run_dir: Path) -> Path | None:
    """Resolve trainer.resume: never -> None; auto -> newest in this run; a path -> that checkpoint or run dir."""
    if resume == "never":
        return None
    if resume == "auto":
        found = list_checkpoints(run_dir / "checkpoints")
        return found[-1] if found else None
    path = Path(resume).expanduser()
    if (path / STATE_FILE).is_file():
        return path
    found = list_checkpoints(path / "checkpoints") or list_checkpoints(path)
    if not found:
        raise FileNotFoundError(
            f"trainer.resume={resume}: no complete checkpoint there (looked for {path}/state.json and "
            f"{path}/checkpoints/step_*); use trainer.resume=auto with hydra.run.dir=<the run's directory>."
        )
    return found[-1]


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict:
    """Restore trainable weights, optimizer, scheduler and RNG from `path`; returns the loop state."""
    if (path / "sharded").is_dir():
        return load_sharded_checkpoint(path, model, optimizer, scheduler)
    trainable = torch.load(path / "trainable.pt", map_location="cpu", weights_only=True)
    params = dict(model.named_parameters())
    missing = sorted(set(trainable) - set(params))
    if missing:
        raise KeyError(f"checkpoint {path} has tensors the model lacks (was lora config changed?): {missing[:3]}")
    with torch.no_grad():
        for name, value in trainable.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True))
    _restore_rng(path)
    return json.loads((path / STATE_FILE).read_text())


def _restore_rng(path: Path) -> None:
    """This rank's RNG state from `path` (a checkpoint of one process restores rank 0's on every rank)."""
    import torch.distributed as tdist

    saved = torch.load(path / "rng.pt", map_location="cpu", weights_only=False)
    states = saved.get("ranks", [saved])  # written before per-rank states: one dict
    rank = tdist.get_rank() if tdist.is_initialized() else 0
    if rank >= len(states):
        log.warning(
            "%s holds RNG states of %d rank(s); rank %d keeps its own (dropout draws differ)", path, len(states), rank
        )
        return
    set_rng_state(states[rank])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
