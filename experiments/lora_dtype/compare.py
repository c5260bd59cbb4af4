"""bf16 adapters against fp32 adapters: the same run twice, `lora.dtype` the only difference; loss curves compared.

    python experiments/lora_dtype/compare.py --out experiments/results/lora_dtype_cpu --steps 60 [OVERRIDE ...]

Each run is `python -m medtune.train` with the overrides below (a bf16 base under bf16 autocast, as on a GPU) plus
yours, logging every step to metrics.jsonl. Writes OUT/results.json (both curves, the eval losses) and
OUT/results.md (the table). The question (issue 21): does `lora.dtype=bfloat16`, which trains faster, train the
same model? Its adapters and their AdamW state are bf16, so an update smaller than half a bf16 step of a weight
(2^-9 of it) is rounded away.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMON = [
    "model=gemma3_270m",
    "model.dtype=bfloat16",
    "trainer.autocast_dtype=bfloat16",
    "trainer.device=cpu",
    "trainer.log_every=1",
    "trainer.progress_bar=false",
    "logger=jsonl",
    "eval=none",
    "stage=train",
]
DTYPES = ("float32", "bfloat16")


def _run(out: Path, dtype: str, steps: int, extra: list[str]) -> dict:
    run_dir = out / f"lora_{dtype}"
    cmd = [sys.executable, "-m", "medtune.train", *COMMON, f"trainer.max_steps={steps}", f"lora.dtype={dtype}"]
    cmd += [*extra, f"hydra.run.dir={run_dir}"]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    (out / f"lora_{dtype}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"lora.dtype={dtype} failed (exit {proc.returncode}); see {out / f'lora_{dtype}.log'}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "command": " ".join(cmd[1:]),
        "wall_s": round(time.monotonic() - started, 1),
        "train_loss": [losses[s] for s in sorted(losses)],
        "steps": sorted(losses),
        "eval_loss": summary.get("eval/loss"),
    }


def _report(runs: dict[str, dict], last: int) -> tuple[dict, str]:
    a, b = runs["float32"]["train_loss"], runs["bfloat16"]["train_loss"]
    n = min(len(a), len(b))
    diffs = [b[i] - a[i] for i in range(n)]
    tail = slice(max(0, n - last), n)
    stats = {
        "steps": n,
        "first_loss": {"float32": a[0], "bfloat16": b[0]},
        f"mean_loss_last_{last}": {d: statistics.fmean(runs[d]["train_loss"][tail]) for d in DTYPES},
        "eval_loss": {d: runs[d]["eval_loss"] for d in DTYPES},
        "mean_abs_diff": statistics.fmean(abs(x) for x in diffs),
        "max_abs_diff": max(abs(x) for x in diffs),
        f"mean_diff_last_{last}": statistics.fmean(diffs[tail]),
        "wall_s": {d: runs[d]["wall_s"] for d in DTYPES},
    }
    lines = [
        f"| lora.dtype | first step loss | mean train loss, last {last} steps | eval loss | wall s |",
        "|---|---|---|---|---|",
    ]
    for d in DTYPES:
        ev = runs[d]["eval_loss"]
        lines.append(
            f"| {d} | {runs[d]['train_loss'][0]:.4f} | {stats[f'mean_loss_last_{last}'][d]:.4f} | "
            f"{'n/a' if ev is None else f'{ev:.4f}'} | {runs[d]['wall_s']:.0f} |"
        )
    lines += [
        "",
        f"Per-step train loss, bf16 minus fp32 adapters, over {n} steps: mean |diff| {stats['mean_abs_diff']:.4f}, "
        f"max |diff| {stats['max_abs_diff']:.4f}, mean diff over the last {last} steps "
        f"{stats[f'mean_diff_last_{last}']:+.4f}.",
    ]
    return stats, "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--last", type=int, default=10, help="steps averaged at the end of each curve")
    parser.add_argument("overrides", nargs="*", help="more medtune.train overrides, e.g. data_mix=medical")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {d: _run(args.out, d, args.steps, args.overrides) for d in DTYPES}
    stats, table = _report(runs, args.last)
    (args.out / "results.json").write_text(json.dumps({"overrides": args.overrides, **stats, "runs": runs}, indent=1))
    (args.out / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
