"""The efficiency benchmark's outputs: ratios against the baseline, the markdown table, results.json/.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch


def add_ratios(rows: list[dict[str, Any]], baseline: str) -> None:
    """Memory ratio, speed ratio and prediction error of each row against the baseline row, in place."""
    base = next((r for r in rows if r["name"] == baseline and r.get("status") == "ok"), None)
    for row in rows:
        if row.get("status") != "ok":
            continue
        alloc, pred = row.get("peak_alloc_gib"), row.get("predicted_gib")
        row["error_pct"] = 100.0 * (pred - alloc) / alloc if alloc and pred is not None else None
        ok_base = base is not None
        base_alloc = base.get("peak_alloc_gib") if ok_base else None
        row["memory_ratio"] = alloc / base_alloc if alloc and base_alloc else None
        speed = row.get("useful_tokens_per_s")
        row["speed_ratio"] = speed / base["useful_tokens_per_s"] if ok_base and speed else None


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_table(rows: list[dict[str, Any]], baseline: str) -> str:
    """The markdown results table (ratios are against `baseline` measured in the same run; peers included)."""
    head = (
        "| configuration | rows | recomputed layers | peak alloc GiB | peak reserved GiB | predicted GiB | error % "
        "| useful tokens/s | slowest timed step s | MFU | MFU (NeMo) | first step s | first step from process start s "
        f"| to last step s | memory vs {baseline} | speed vs {baseline} |"
    )
    lines = [head, "|" + "---|" * 16]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| {r['name']} | failed: {r.get('error', '')[:80]} |" + " |" * 14)
            continue
        mfu = None if r.get("mfu") is None else 100 * r["mfu"]
        nemo = None if r.get("mfu_nemo") is None else 100 * r["mfu_nemo"]
        plan = r.get("plan") or {}
        recomputed = None
        if "checkpointed_layers" in plan:
            recomputed = f"{plan['checkpointed_layers']}/{plan['layers']}"
            recomputed += " + offload" if plan.get("offload_activations") else ""
        cells = [
            r["name"],
            str(r.get("micro_batch_size", "n/a")),
            recomputed or "n/a",
            _fmt(r.get("peak_alloc_gib"), ".2f"),
            _fmt(r.get("peak_reserved_gib"), ".2f"),
            _fmt(r.get("predicted_gib"), ".2f"),
            _fmt(r.get("error_pct"), "+.1f"),
            _fmt(r.get("useful_tokens_per_s"), ",.0f"),
            _fmt(r.get("slowest_step_s"), ".2f"),
            _fmt(mfu, ".1f") + ("%" if mfu is not None else ""),
            _fmt(nemo, ".1f") + ("%" if nemo is not None else ""),
            _fmt(r.get("first_step_s"), ".1f"),
            _fmt(r.get("process_to_first_step_s"), ".1f"),
            _fmt(r.get("wall_to_last_step_s"), ".1f"),
            _fmt(r.get("memory_ratio"), ".2f") + ("x" if r.get("memory_ratio") is not None else ""),
            _fmt(r.get("speed_ratio"), ".2f") + ("x" if r.get("speed_ratio") is not None else ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _command() -> str:
    args = " ".join(sys.argv[1:])
    return f"python -m medtune.bench {args}" if sys.argv[0].endswith("bench.py") else " ".join(sys.argv)


def environment() -> dict[str, Any]:
    """Device name, CUDA and package versions, and the command line."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"device": device, "cuda": torch.version.cuda, "versions": versions, "command": _command()}


def write_results(results: dict[str, Any], out: Path, baseline: str) -> None:
    """results.json, results.md (and profile.txt) under `out`; prints the table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    lines = [
        f"# Efficiency benchmark ({results['device']}, {results['gpus']} device(s))",
        "",
        f"`{results['command']}` from {results['started_at']} to {results['finished_at']}; {versions}.",
        f"{results['warmup']} warm-up then {results['steps']} timed optimizer steps per configuration; samples drawn "
        "from the training mix's lengths (experiments/efficiency/lengths.json). Peak memory since the timed steps "
        "began; predicted = `python -m medtune.memory` with the same overrides; error = (predicted - peak alloc) / "
        "peak alloc. Useful tokens exclude padding; MFU against the dense bf16 peak of the device, recomputation "
        "counted; MFU (NeMo): NeMo Automodel's LoRA convention, (2 + N_lora/N_frozen)/3 of full training's FLOPs, "
        "recomputation not counted (medtune/training/step_metrics.py). recomputed layers: the memory plan's.",
        "",
        format_table(results["configurations"], baseline),
        "",
    ]
    if "profile" in results:
        lines += [f"## Where the step time goes ({results['profile']['configuration']})", "", "```",
                  results["profile"]["table"], "```", ""]  # fmt: skip
    (out / "results.md").write_text("\n".join(lines))
    (out / "profile.txt").write_text(results["profile"]["table"]) if "profile" in results else None
    print(format_table(results["configurations"], baseline))
