"""Memory per phase of a run, on every rank: training's phases (load, train, eval) and the evaluation command's.

    reset_peak_memory(device, release_cache=True)     # a phase starts: peaks are measured from here
    memory = per_rank_memory(memory_metrics(device, "eval"), device)   # sys/eval/... of the busiest rank, and each

Peak allocated / reserved GiB: torch.cuda.max_memory_allocated / max_memory_reserved on this rank since the phase
began; CPU RSS from psutil. Every rank must call per_rank_memory (it gathers).
"""

from __future__ import annotations

import os

import psutil
import torch

from medtune.files.space import GIB
from medtune.runtime.process_group import all_gather_objects


def reset_peak_memory(device: torch.device, release_cache: bool = False) -> None:
    """Start a new memory phase: peaks are measured from here.

    release_cache=True first returns the cached blocks of earlier phases (or of the previous job of a multirun,
    same process), so the phase's peak reserved is its own; used at a job's start and before lm-eval, never inside
    the training loop (re-reserving every step would cost time).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        if release_cache:
            import gc

            gc.collect()
            torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def memory_metrics(device: torch.device, phase: str) -> dict[str, float]:
    """Peak allocated/reserved GiB of this rank in `phase`, what is still allocated at its end, and the process RSS."""
    out = {f"sys/{phase}/cpu_rss_gib": psutil.Process(os.getpid()).memory_info().rss / GIB}
    if device.type == "cuda":
        out[f"sys/{phase}/alloc_gib"] = torch.cuda.memory_allocated(device) / GIB
        out[f"sys/{phase}/peak_alloc_gib"] = torch.cuda.max_memory_allocated(device) / GIB
        out[f"sys/{phase}/peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / GIB
    return out


def per_rank_memory(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Memory metrics of every rank: `sys/<phase>/<key>` becomes the busiest rank's value, and each rank's own
    value is kept as `sys/<phase>/rank<r>/<key>` (one process: returned as given). Every rank must call it."""
    everyone = all_gather_objects(values)
    if len(everyone) == 1:
        return values
    out = {k: max(r[k] for r in everyone) for k in values}
    for rank, theirs in enumerate(everyone):
        for key, value in theirs.items():
            phase, _, name = key.rpartition("/")
            out[f"{phase}/rank{rank}/{name}"] = value
    return out
