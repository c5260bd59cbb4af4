"""`trainer.micro_batch_size=auto`: the largest micro-batch whose predicted peak fits `trainer.memory_budget_gib`.

    cfg, fit = fit_micro_batch(cfg, world_size=8)   # cfg.trainer.micro_batch_size is now a number; fit says why

The prediction is the estimator's worst case (every token of a row carries a label) unless `label_tokens_per_row`
is given, so the chosen size errs on the safe side; the run logs the choice and its measured peak beside it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from medtune.config import ConfigError, TrainConfig
from medtune.files.space import GIB
from medtune.memory.estimate import estimate

MAX_ROWS = 1024  # no micro-batch larger than this is considered (a 2048-token row x 1024 is 2M tokens)


def with_micro_batch(cfg: TrainConfig, rows: int) -> TrainConfig:
    """cfg with trainer.micro_batch_size set to `rows`."""
    return dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, micro_batch_size=rows))


def fit_micro_batch(
    cfg: TrainConfig, world_size: int = 1, label_tokens_per_row: float | None = None
) -> tuple[TrainConfig, dict[str, Any]]:
    """cfg with the largest micro_batch_size (at most MAX_ROWS) whose predicted peak fits the budget; a cfg whose
    micro_batch_size is a number comes back as it is, with no fit record."""
    if cfg.trainer.micro_batch_size != "auto":
        return cfg, {}
    budget = float(cfg.trainer.memory_budget_gib)

    def peak(rows: int) -> float:
        return (
            estimate(with_micro_batch(cfg, rows), world_size, label_tokens_per_row=label_tokens_per_row).peak_bytes
            / GIB
        )

    load = estimate(with_micro_batch(cfg, 1), world_size).load_peak_bytes / GIB
    if load > budget:
        raise ConfigError(
            f"trainer.micro_batch_size=auto: loading the model is predicted to peak at {load:.2f} GiB per GPU (every "
            f"rank builds the whole model before sharding it), over trainer.memory_budget_gib={budget:g}; no "
            "micro-batch size changes that: raise the budget, or use a smaller or quantised model."
        )
    if peak(1) > budget:
        raise ConfigError(
            f"trainer.micro_batch_size=auto: even one row of {cfg.packing.max_seq_len} tokens is predicted to need "
            f"{peak(1):.2f} GiB, over trainer.memory_budget_gib={budget:g}; lower packing.max_seq_len, use "
            "quantization=nf4, sharding=fsdp over more GPUs, or raise the budget (python -m medtune.memory shows "
            "the parts)."
        )
    low, high = 1, 2  # grow, then bisect: the peak rises with the rows
    while high <= MAX_ROWS and peak(high) <= budget:
        low, high = high, high * 2
    high = min(high, MAX_ROWS + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if peak(mid) <= budget else (low, mid)
    fit = {
        "trainer/micro_batch_size_auto": low,
        "trainer/memory_budget_gib": budget,
        "trainer/predicted_peak_gib": peak(low),
        "trainer/predicted_peak_gib_next": peak(low + 1) if low < MAX_ROWS else None,
    }
    return with_micro_batch(cfg, low), fit
