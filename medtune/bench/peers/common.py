"""What every peer script shares: its arguments, the samples, step timing and the result it writes."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

STARTED = time.perf_counter()  # the clock starts when the peer's script is imported, before its framework loads
GIB = 1024**3  # a peer's process imports nothing of medtune's layers (its environment may not have them)


def arguments(description: str) -> argparse.Namespace:
    """The options every peer takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", required=True, help="a checkpoint directory (config.json, safetensors, tokenizer)")
    parser.add_argument("--samples", required=True, help="JSON Lines of {input_ids, labels}")
    parser.add_argument("--out", required=True, help="where the result JSON goes")
    parser.add_argument("--rows", type=int, default=4, help="packed rows per optimizer step")
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps in all")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the steady-state rate")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-dropout", type=float, default=0.0)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--quant", choices=["nf4", "none"], default="nf4")
    parser.add_argument("--liger", action="store_true", help="(TRL) Liger kernels")
    return parser.parse_args()


def read_samples(path: str) -> list[dict[str, list[int]]]:
    """The samples medtune trained on."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class StepClock:
    """Wall time at the end of each optimizer step, and the useful (non-pad) tokens each step trained on."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.tokens: list[int] = []
        self.loaded_at: float | None = None
        self._pending = 0

    def add_tokens(self, n: int) -> None:
        self._pending += int(n)

    def step_end(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())
        self.tokens.append(self._pending)
        self._pending = 0

    def result(self, warmup: int, extra: dict[str, Any]) -> dict[str, Any]:
        """The measurements: steady rate over the steps after `warmup`, first-step and last-step times."""
        import torch

        timed = range(warmup, len(self.ends))
        starts = [self.loaded_at or STARTED, *self.ends[:-1]]
        times = [self.ends[i] - starts[i] for i in timed]  # one slow step (a recompile, a stall) moves the mean
        seconds = sum(times)
        useful = sum(self.tokens[i] for i in timed)
        out = {
            "steps": len(self.ends),
            "useful_tokens_per_s": useful / seconds if seconds > 0 else None,
            "step_s": seconds / max(len(timed), 1),
            "first_step_s": self.ends[0] - (self.loaded_at or STARTED),
            "wall_to_last_step_s": self.ends[-1] - (self.loaded_at or STARTED),
            "process_to_first_step_s": self.ends[0] - STARTED,
            "useful_tokens_per_step": useful / max(len(timed), 1),
        }
        if times:
            out.update({"step_times_s": times, "slowest_step_s": max(times)})
        if torch.cuda.is_available():
            out["peak_alloc_gib"] = torch.cuda.max_memory_allocated() / GIB
            out["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
        return out | extra


def write_result(path: str, result: dict[str, Any]) -> None:
    """The peer's one JSON."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=1, default=str))
