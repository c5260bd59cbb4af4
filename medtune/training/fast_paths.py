"""Settle every `auto` speed and memory choice for this machine before the model loads, and say what was taken.

    cfg, record = settle(cfg, dist)          # kernels, RMSNorm, budget, rows, recomputation, offloading
    log.info(describe(model, cfg, device))   # after the build: the fast paths the run actually took

The defaults are the fast path: every switch that computes the same training math is `auto` and is taken where
the machine allows it (`trainer.kernels`, `trainer.rms_norm`, `packing.attention`, `trainer.loss_kernel`,
`lora.fused`), and the memory the GPU has is used instead of recomputation (memory/plan.py). A path turned down is
named with the reason ("liger: liger_kernel not installed ..."), in the log and in summary.json
(`run/fast_paths_refused`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from medtune.config import TrainConfig
from medtune.files.space import GIB
from medtune.memory.estimate import load_arch
from medtune.memory.plan import default_budget_gib, plan_memory
from medtune.models.anatomy import causal_lm_of, decoder_layers
from medtune.models.kernels import resolve_kernels
from medtune.runtime.process_group import DistInfo, all_gather_objects
from medtune.training import ce_kernel

log = logging.getLogger("medtune.train")


def memory_budget_gib(cfg: TrainConfig, device: torch.device) -> float | None:
    """trainer.memory_budget_gib, else on CUDA this GPU's free memory less the margin, else None; the smallest
    over ranks, so that every rank plans the same run."""
    budget = cfg.trainer.memory_budget_gib
    if budget is None and device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = default_budget_gib(free / GIB, total / GIB)
    budgets = all_gather_objects(budget)
    return None if None in budgets else min(budgets)


def settle(
    cfg: TrainConfig, dist: DistInfo, label_tokens_per_row: float | None = None
) -> tuple[TrainConfig, dict[str, Any]]:
    """cfg with trainer.kernels / rms_norm decided for this device, and the memory plan applied; the record holds
    the plan, the choices and what an `auto` turned down."""
    tc = cfg.trainer
    try:
        arch = load_arch(cfg)
    except ValueError:  # a hub model without a local config.json: its shape is known only after loading
        arch = None
    kernels, rms_norm, refused = resolve_kernels(
        tc.kernels, tc.rms_norm, dist.device.type, arch.model_type if arch else None
    )
    cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(tc, kernels=kernels, rms_norm=rms_norm))
    budget = memory_budget_gib(cfg, dist.device)
    if arch is None and budget is not None:
        refused.append("memory plan: the architecture is unknown before loading; every layer is checkpointed")
        budget = None
    cfg, record = plan_memory(cfg, dist.world_size, budget, label_tokens_per_row)
    record["run/fast_paths_refused"] = "; ".join(refused) or "none"
    for why in refused:
        log.info("fast path not taken: %s", why)
    over = record.get("plan/predicted_peak_gib", 0.0) > record.get("plan/budget_gib", float("inf"))
    log.log(logging.WARNING if over else logging.INFO, "memory plan: %s", record["plan/reason"])  # run anyway
    return cfg, record


def record_settled(dict_cfg: Any, cfg: TrainConfig) -> None:
    """Write the kernels `auto` chose into the composed config (config.yaml, checkpoints, resume's comparison):
    a run resumed on a machine that settles them otherwise is told, as for any change; the memory plan's choices
    change no gradient and stay as asked (resume treats them as free)."""
    from omegaconf import open_dict

    with open_dict(dict_cfg):
        dict_cfg.trainer.kernels = cfg.trainer.kernels
        dict_cfg.trainer.rms_norm = cfg.trainer.rms_norm


def describe(model: nn.Module, cfg: TrainConfig, device: torch.device, speedups: list[str]) -> str:
    """One line of the fast paths this run took, read from the built model and the settled config."""
    lm = causal_lm_of(model)
    layers = decoder_layers(model)
    ckpt = sum(bool(getattr(layer, "gradient_checkpointing", False)) for layer in layers)
    tc, lc = cfg.trainer, cfg.lora
    parts = [
        f"attention={getattr(lm.config, '_attn_implementation', '?')}",
        f"kernels={','.join(speedups) or 'none'}",
        f"loss={ce_kernel.resolve(tc.loss_kernel, device)}",
        "lora=" + ("fused" + ("+base" if lc.fused_base else "") if lc.fused else "peft") + f"({lc.dtype})",
        f"recompute={ckpt}/{len(layers)} layers",
        f"offload={'on' if tc.offload_activations is True else 'off'}",
    ]
    return " ".join(parts)


def log_taken(summary: dict[str, Any], model: nn.Module, cfg: TrainConfig, device: torch.device) -> str:
    """describe() of the built model into summary["run/fast_paths"] and the log (after the data: packing has
    chosen the attention kernel by then)."""
    speedups = [s for s in summary.get("trainer/speedups", "none").split(",") if s != "none"]
    summary["run/fast_paths"] = describe(model, cfg, device, speedups)
    log.info("fast paths: %s", summary["run/fast_paths"])
    return summary["run/fast_paths"]
