"""Adapter dtype and LoRA dropout, the two defaults that change the training math: the same run four times.

    python experiments/lora_defaults/decide.py --out experiments/results/lora_defaults_cpu --steps 200 \
        --only fp32_d05 fp32_d0 -- model.dtype=float32 trainer.autocast_dtype=null data_mix=medical ...
    python experiments/lora_defaults/decide.py --out OUT --steps 220 --device cuda --evaluate \
        -- +experiment=lora_decide_270m model.path=<gguf>      # on a GPU, with each run's evaluation

Each run is `python -m medtune.train` (Gemma 3 270M, eval loss on the held-out micro-batches) with `lora.dtype` in
{float32, bfloat16} and `lora.dropout` in {0.05, 0}, everything else equal; the chosen variants run side by side,
the CPU's cores shared between them. With --evaluate each run also runs its evaluation stage (the config's eval
tasks), and every variant's answers are compared question by question with the first variant's (paired accuracy
and gold-letter log-likelihood changes, as medtune.report compares a run with its base).
Writes OUT/results.json (every step's train loss, the eval losses, the paired comparisons) and OUT/results.md (the
tables). Issue 30: a switch that changes the math becomes a default only when its loss and evaluation are no worse.
A variant that fails is recorded and the others are still reported (exit status 1).
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

COMMON = ["model=gemma3_270m", "trainer.log_every=1", "trainer.progress_bar=false", "logger=jsonl"]
TRAIN_ONLY = ["eval=none", "stage=train"]  # without --evaluate
REFERENCE = "fp32_d05"  # the paper's adapters: fp32, dropout 0.05
EVAL_KEYS = ("/acc", "/gold_ll_letter", "/n")  # of each language pool, from a run's summary.json
VARIANTS = {"fp32_d05": ("float32", 0.05), "bf16_d05": ("bfloat16", 0.05), "fp32_d0": ("float32", 0.0),
            "bf16_d0": ("bfloat16", 0.0)}  # fmt: skip


def start(out: Path, name: str, steps: int, extra: list[str], threads: int) -> tuple[subprocess.Popen, list, float]:
    """Start one medtune.train run (`extra`: the fixed overrides, then the caller's); its process, command, start."""
    dtype, dropout = VARIANTS[name]
    cmd = [sys.executable, "-m", "medtune.train", *COMMON, f"trainer.max_steps={steps}", f"lora.dtype={dtype}",
           f"lora.dropout={dropout}", *extra, f"hydra.run.dir={out / name}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    log = (out / f"{name}.log").open("w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), cmd, time.monotonic()


def collect(out: Path, name: str, proc: subprocess.Popen, cmd: list, started: float) -> dict | None:
    """Wait for a run; its per-step train loss, eval loss, evaluation accuracy and wall time (None: it failed)."""
    if proc.wait() != 0:
        print(f"{name} failed (exit {proc.returncode}); see {out / f'{name}.log'}", file=sys.stderr)
        return None
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
    summary = json.loads((out / name / "summary.json").read_text())
    scores = {k: v for k, v in summary.items() if k.startswith("eval/lang/") and k.endswith(EVAL_KEYS)}
    return {"command": " ".join(cmd[1:]), "wall_s": round(time.monotonic() - started, 1),
            "train_loss": [losses[s] for s in sorted(losses)], "eval_loss": summary.get("eval/loss"),
            "eval_loss_tokens": summary.get("eval/loss_tokens"), "eval": scores}  # fmt: skip


def table(runs: dict[str, dict], last: int) -> str:
    """The markdown table: last-`last`-step mean train loss and eval loss against the reference (fp32 with dropout
    0.05 when it ran), and each language pool's accuracy and gold-letter log-likelihood when the runs evaluated."""
    ref = runs.get(REFERENCE) or next(iter(runs.values()))
    langs = sorted({k.split("/")[2] for r in runs.values() for k in r.get("eval", {})})
    lines = [f"| variant | lora.dtype | lora.dropout | mean train loss, last {last} steps | vs reference | eval loss "
             "| vs reference | " + "".join(f"{g} acc % | {g} gold LL letter | " for g in langs) + "wall s |",
             "|---|---|---|---|---|---|---|" + "---|---|" * len(langs) + "---|"]  # fmt: skip
    ref_tail = statistics.fmean(ref["train_loss"][-last:])
    for name, r in runs.items():
        tail = statistics.fmean(r["train_loss"][-last:])
        eval_loss, ref_eval = r["eval_loss"], ref["eval_loss"]
        held_out = "n/a | n/a" if None in (eval_loss, ref_eval) else f"{eval_loss:.4f} | {eval_loss - ref_eval:+.4f}"
        scores = "".join(
            f"{100 * r['eval'].get(f'eval/lang/{g}/acc', float('nan')):.2f} | "
            f"{r['eval'].get(f'eval/lang/{g}/gold_ll_letter', float('nan')):.4f} | "
            for g in langs
        )
        lines.append(f"| {name} | {VARIANTS[name][0]} | {VARIANTS[name][1]} | {tail:.4f} | {tail - ref_tail:+.4f} | "
                     f"{held_out} | {scores}{r['wall_s']:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def paired(out: Path, names: list[str]) -> tuple[dict[str, list], str]:
    """Every variant's evaluation answers against the reference's, question by question: medtune's forgetting rows
    (accuracy change with McNemar, gold log-likelihood changes with bootstrap intervals) and their markdown."""
    from medtune.eval.forgetting import forgetting, format_forgetting
    from medtune.eval.scoring import read_predictions

    ref = REFERENCE if REFERENCE in names else names[0]
    answers = {n: out / n / "eval" / "adapter" / "predictions.jsonl" for n in names}
    if not answers[ref].is_file():
        return {}, ""
    base, rows, text = read_predictions(answers[ref]), {}, []
    for name in names:
        if name != ref and answers[name].is_file():
            rows[name] = forgetting(base, read_predictions(answers[name]))
            text += [f"### {name} against {ref}", "", format_forgetting(rows[name]), ""]
    head = [f"## Evaluation, paired: each variant (run) against {ref} (base columns), on the same questions", ""]
    return rows, "\n".join(head + text) if text else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--last", type=int, default=20, help="steps averaged at the end of each curve")
    parser.add_argument("--only", nargs="*", default=list(VARIANTS), help="variants to run")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="trainer.device")
    parser.add_argument("--evaluate", action="store_true", help="run each run's evaluation stage and compare them")
    parser.add_argument("overrides", nargs="*", help="more medtune.train overrides, e.g. data_mix=medical")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // len(args.only))
    fixed = [f"trainer.device={args.device}", *([] if args.evaluate else TRAIN_ONLY), *args.overrides]
    started = {name: start(args.out, name, args.steps, fixed, threads) for name in args.only}
    collected = {name: collect(args.out, name, *started[name]) for name in args.only}
    runs = {name: r for name, r in collected.items() if r is not None}
    failed = sorted(set(collected) - set(runs))
    rows, comparison = paired(args.out, list(runs)) if args.evaluate and runs else ({}, "")
    record = {"overrides": args.overrides, "device": args.device, "runs": runs, "failed": failed, "paired": rows}
    (args.out / "results.json").write_text(json.dumps(record, indent=1))
    text = (table(runs, args.last) if runs else "") + (f"\n{comparison}" if comparison else "")
    text += f"\nFailed: {', '.join(failed)} (logs in {args.out})\n" if failed else ""
    (args.out / "results.md").write_text(text)
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
