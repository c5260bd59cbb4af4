"""Give the peers what medtune trained on, run each in its own process, and collect their results.

inputs = peer_inputs(cfg, examples, tokenizer, out / "peers")   # samples.jsonl and a random-weight checkpoint
rows = run_peers(["trl", "trl_liger"], inputs, cfg, args, envs={"unsloth": "/root/site_unsloth"})
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from medtune.bench.peers import PEERS
from medtune.bench.plan import run_bounded
from medtune.files.atomic import atomic_dir
from medtune.models.build import arch_config

log = logging.getLogger("medtune.bench")
REPO = Path(__file__).resolve().parents[3]


def peer_inputs(cfg: Any, examples: list[dict], tokenizer: Any, out_dir: Path) -> dict[str, Path]:
    """samples.jsonl (medtune's exact samples) and a bf16 checkpoint of the architecture with random weights.

    The peers load it with nf4 quantisation at load time (their usual path); the weights are random like medtune's,
    so speed and memory compare, not the loss values.
    """
    from transformers import AutoModelForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    samples = out_dir / "samples.jsonl"
    with samples.open("w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps({"input_ids": ex["input_ids"], "labels": ex["labels"]}) + "\n")
    # keyed by what the weights depend on, and published whole: a later run with another model (or a write that
    # died half-way) never hands the peers a stale or partial checkpoint
    model_dir = out_dir / f"model-{cfg.model.arch}-{cfg.model.num_layers or 'all'}layers-seed{cfg.seed}"
    if not (model_dir / "config.json").is_file():
        config = arch_config(cfg.model.arch, cfg.model.num_layers)
        torch.manual_seed(cfg.seed)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init of 4B on a CPU takes minutes
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        with atomic_dir(model_dir) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        del model
    return {"samples": samples, "model": model_dir}


def run_peers(names: list[str], inputs: dict[str, Path], cfg: Any, args: Any, envs: dict[str, str]) -> list[dict]:
    """One result row per peer (failed ones with the reason), each from its own process."""
    rows = []
    for name in names:
        module, flags = PEERS[name]
        result_path = inputs["model"].parent / f"{name}.json"
        cmd = [sys.executable, "-m", module, "--model", str(inputs["model"]), "--samples", str(inputs["samples"])]
        cmd += ["--out", str(result_path), "--rows", str(cfg.trainer.micro_batch_size)]
        cmd += ["--max-len", str(cfg.packing.max_seq_len), "--steps", str(args.warmup + args.steps)]
        cmd += ["--warmup", str(args.warmup), "--lora-r", str(cfg.lora.r), "--lora-dropout", str(cfg.lora.dropout)]
        cmd += ["--quant", "nf4" if cfg.quantization.method == "nf4" else "none", *flags]
        env = dict(os.environ)
        if name in envs:  # its own pins: its site-packages first, then medtune's source (for the peer scripts)
            env["PYTHONPATH"] = os.pathsep.join([envs[name], str(REPO)])
        started = time.perf_counter()
        log_path = inputs["model"].parent / f"{name}.log"
        with log_path.open("w") as log_file:  # written as it runs: a peer that runs out of time leaves its log
            code = run_bounded(cmd, env, log_file, args.peer_timeout_s)
        row: dict[str, Any] = {"name": f"peer:{name}", "wall_s": time.perf_counter() - started}
        if code == 0 and result_path.is_file():
            row |= json.loads(result_path.read_text()) | {"status": "ok"}
        elif code is None:
            row |= {"status": "failed", "error": f"stopped after --peer-timeout-s={args.peer_timeout_s:g} s (its "
                    f"compile included; unsloth's first run compiles for minutes); log: {log_path}"}  # fmt: skip
        else:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            row |= {"status": "failed", "error": f"exit {code}: {tail[0][:300]}; log: {log_path}"}
        log.info("peer %s: %s", name, {k: v for k, v in row.items() if k != "error"} | {"error": row.get("error")})
        rows.append(row)
    return rows
