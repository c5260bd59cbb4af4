"""The memory plan: rows per step, which layers to recompute and whether to offload, decided from a budget.

    cfg, record = plan_memory(cfg, budget_gib=70.0)   # every `auto` of the three settled; record says why

Recomputing a decoder layer in backward (gradient checkpointing) costs about a third of that layer's step time
(issue 30, H100: no checkpointing 1.41x the tokens/s of checkpointing every layer) and saves its activations. So the
plan recomputes as few layers as fit: with `trainer.grad_ckpt_every=auto` it takes the smallest number of
checkpointed layers whose predicted peak (memory/estimate.py) fits `budget_gib`, 0 when the whole step fits; when
even every layer does not fit, `trainer.offload_activations=auto` keeps the checkpointed inputs in pinned CPU memory.
`trainer.micro_batch_size=auto` is settled first, with every layer checkpointed (the most rows that can fit), then
the recomputation for those rows. Without a budget (a CPU run) every layer is checkpointed, as before.
No torch: the budget comes from the caller (training/fast_paths.py reads the GPU's free memory).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from medtune.config import ConfigError, TrainConfig
from medtune.files.space import GIB
from medtune.memory.estimate import estimate, load_arch
from medtune.memory.fit import fit_micro_batch

MARGIN_GIB = 2.0  # the default budget leaves the larger of this and MARGIN_SHARE of the card unplanned
MARGIN_SHARE = 0.10  # the estimator's error (within 10% of every measured configuration) and the allocator's


def default_budget_gib(free_gib: float, total_gib: float) -> float:
    """The budget when trainer.memory_budget_gib is null: the GPU's free memory less the larger of 2 GiB and 10%
    of the card (the estimate is within 10% of the measured peaks; the caching allocator fragments)."""
    return max(free_gib - max(MARGIN_GIB, MARGIN_SHARE * total_gib), 0.0)


def _with(cfg: TrainConfig, **trainer: Any) -> TrainConfig:
    return dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, **trainer))


def plan_memory(
    cfg: TrainConfig, world_size: int = 1, budget_gib: float | None = None, label_tokens_per_row: float | None = None
) -> tuple[TrainConfig, dict[str, Any]]:
    """cfg with micro_batch_size, the checkpointed layers and offloading settled; the record names the plan, its
    predicted peak and the budget. budget_gib None: no budget (CPU), every layer checkpointed, no offload."""
    tc = cfg.trainer
    if budget_gib is None:
        if tc.micro_batch_size == "auto":
            raise ConfigError(
                "trainer.micro_batch_size=auto needs a memory budget: set trainer.memory_budget_gib (GiB per GPU, "
                "e.g. 20), or run on a CUDA GPU, where the budget defaults to its free memory less a margin."
            )
        every = 1 if tc.grad_ckpt_every == "auto" else tc.grad_ckpt_every
        cfg = _with(cfg, grad_ckpt_every=every, offload_activations=tc.offload_activations is True)
        return cfg, {"plan/reason": "no memory budget (no GPU and trainer.memory_budget_gib unset)"}
    record: dict[str, Any] = {"plan/budget_gib": budget_gib}
    if tc.micro_batch_size == "auto":
        fit_cfg = _with(cfg, memory_budget_gib=budget_gib)
        fitted, fit = fit_micro_batch(fit_cfg, world_size, label_tokens_per_row)
        cfg = _with(cfg, micro_batch_size=fitted.trainer.micro_batch_size)
        record.update(fit)

    def peak(c: TrainConfig) -> float:
        return estimate(c, world_size, label_tokens_per_row=label_tokens_per_row).peak_bytes / GIB

    n_layers = load_arch(cfg).layers
    auto_ckpt = tc.grad_ckpt_every == "auto" and tc.grad_ckpt_layers is None
    if auto_ckpt:
        chosen = next((n for n in range(n_layers + 1) if peak(_with(cfg, grad_ckpt_layers=n)) <= budget_gib), None)
        cfg = _with(cfg, grad_ckpt_every=1, grad_ckpt_layers=n_layers if chosen is None else chosen)
    elif tc.grad_ckpt_every == "auto":
        cfg = _with(cfg, grad_ckpt_every=1)
    offload = tc.offload_activations
    if offload == "auto":
        offload = peak(cfg) > budget_gib and peak(_with(cfg, offload_activations=True)) <= budget_gib
        cfg = _with(cfg, offload_activations=offload)
    predicted = peak(cfg)
    n_ckpt = len(cfg.trainer.checkpointed_layers(n_layers))
    record.update(
        {
            "plan/checkpointed_layers": n_ckpt,
            "plan/layers": n_layers,
            "plan/offload_activations": bool(offload),
            "plan/predicted_peak_gib": predicted,
            "plan/reason": _reason(n_ckpt, n_layers, bool(offload), predicted, budget_gib, auto_ckpt)
            + (_switches(cfg, n_ckpt == n_layers, tc.offload_activations is False) if predicted > budget_gib else ""),
        }
    )
    return cfg, record


def _reason(n_ckpt: int, n_layers: int, offload: bool, predicted: float, budget: float, auto: bool) -> str:
    what = f"{n_ckpt} of {n_layers} layers recomputed" + (", checkpointed inputs offloaded to CPU" if offload else "")
    head = f"{what}: predicted peak {predicted:.2f} GiB, budget {budget:.2f} GiB"
    if predicted > budget:
        return f"{head}: over the budget even so"
    if not auto:
        return f"{head} (trainer.grad_ckpt_every / grad_ckpt_layers as set)"
    return head + (": the whole step fits, nothing recomputed" if n_ckpt == 0 else ": the fewest that fit")


def _switches(cfg: TrainConfig, every_layer: bool, offload_refused: bool) -> str:
    """The settings that lower the predicted peak and are not in use yet, for the over-budget message (offloading
    only when it was turned off: `auto` has already tried it)."""
    tc = cfg.trainer
    switches = [] if every_layer else ["trainer.grad_ckpt_every=auto (recompute more layers)"]
    if offload_refused:
        switches.append("trainer.offload_activations=true")
    if tc.micro_batch_size != 1:
        switches.append("a lower trainer.micro_batch_size")
    switches.append("a lower packing.max_seq_len")
    if cfg.quantization.method == "none":
        switches.append("quantization=nf4")
    if cfg.sharding.strategy != "fsdp":
        switches.append("sharding=fsdp over more GPUs")
    return f"; try {', '.join(switches)}, or raise trainer.memory_budget_gib if the card has more free memory."
