"""Adapter dtype and LoRA dropout, the two defaults that change the training math: the same run four times.

    python experiments/lora_defaults/decide.py --out experiments/results/lora_defaults_cpu --steps 200 \
        --only fp32_d05 fp32_d0 -- model.dtype=float32 trainer.autocast_dtype=null data_mix=medical ...

Each run is `python -m medtune.train` (Gemma 3 270M, eval loss on the held-out micro-batches) with `lora.dtype` in
{float32, bfloat16} and `lora.dropout` in {0.05, 0}, everything else equal; the chosen variants run side by side,
the CPU's cores shared between them.
Writes OUT/results.json (every step's train loss, the eval losses) and OUT/results.md (the table). Issue 30: a switch
that changes the math becomes a default only when its loss and evaluation are no worse.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMON = ["model=gemma3_270m", "trainer.device=cpu", "trainer.log_every=1", "trainer.progress_bar=false",
          "logger=jsonl", "eval=none", "stage=train"]  # fmt: skip
VARIANTS = {"fp32_d05": ("float32", 0.05), "bf16_d05": ("bfloat16", 0.05), "fp32_d0": ("float32", 0.0),
            "bf16_d0": ("bfloat16", 0.0)}  # fmt: skip


def start(out: Path, name: str, steps: int, extra: list[str], threads: int) -> tuple[subprocess.Popen, list, float]:
    """Start one medtune.train run; returns the process, its command and its start time."""
    dtype, dropout = VARIANTS[name]
    cmd = [sys.executable, "-m", "medtune.train", *COMMON, f"trainer.max_steps={steps}", f"lora.dtype={dtype}",
           f"lora.dropout={dropout}", *extra, f"hydra.run.dir={out / name}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    log = (out / f"{name}.log").open("w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), cmd, time.monotonic()


def collect(out: Path, name: str, proc: subprocess.Popen, cmd: list, started: float) -> dict:
    """Wait for a run; its per-step train loss, eval loss and wall time."""
    if proc.wait() != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}); see {out / f'{name}.log'}")
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
    summary = json.loads((out / name / "summary.json").read_text())
    return {"command": " ".join(cmd[1:]), "wall_s": round(time.monotonic() - started, 1),
            "train_loss": [losses[s] for s in sorted(losses)], "eval_loss": summary.get("eval/loss"),
            "eval_loss_tokens": summary.get("eval/loss_tokens")}  # fmt: skip


def table(runs: dict[str, dict], last: int) -> str:
    """The markdown table: last-`last`-step mean train loss and eval loss, each against fp32 with dropout 0.05."""
    ref = runs.get("fp32_d05") or next(iter(runs.values()))
    lines = [f"| variant | lora.dtype | lora.dropout | mean train loss, last {last} steps | vs fp32, 0.05 | eval loss "
             "| vs fp32, 0.05 | wall s |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    ref_tail = statistics.fmean(ref["train_loss"][-last:])
    for name, r in runs.items():
        tail = statistics.fmean(r["train_loss"][-last:])
        eval_loss, ref_eval = r["eval_loss"], ref["eval_loss"]
        lines.append(f"| {name} | {VARIANTS[name][0]} | {VARIANTS[name][1]} | {tail:.4f} | {tail - ref_tail:+.4f} | "
                     f"{eval_loss:.4f} | {eval_loss - ref_eval:+.4f} | {r['wall_s']:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--last", type=int, default=20, help="steps averaged at the end of each curve")
    parser.add_argument("--only", nargs="*", default=list(VARIANTS), help="variants to run")
    parser.add_argument("overrides", nargs="*", help="more medtune.train overrides, e.g. data_mix=medical")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // len(args.only))
    started = {name: start(args.out, name, args.steps, args.overrides, threads) for name in args.only}
    runs = {name: collect(args.out, name, *started[name]) for name in args.only}
    (args.out / "results.json").write_text(json.dumps({"overrides": args.overrides, "runs": runs}, indent=1))
    (args.out / "results.md").write_text(table(runs, args.last))
    print(table(runs, args.last))


if __name__ == "__main__":
    main()
