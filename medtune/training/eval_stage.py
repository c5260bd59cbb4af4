"""The eval stage of a training run: lm-eval on the trained adapter (and the cached base), logged to the tracker.

Under torchrun every rank takes part: each scores a share of the questions (under FSDP through the sharded model, its
forwards in lockstep), rank 0 gathers them, so the tables equal a one-process evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from medtune.config import TrainConfig
from medtune.eval.evaluation import evaluate
from medtune.eval.ranks import Ranks
from medtune.runtime.shards import is_fsdp, measured_scoring

log = logging.getLogger("medtune.evaluate")
TABLE_COLUMNS = ["acc", "acc_ci_low", "acc_ci_high", "n", "gold_ll_letter", "gold_ll_text", "delta_pp", "p_mcnemar"]


def run_eval_stage(
    cfg: TrainConfig,
    model: torch.nn.Module,
    tokenizer: Any,
    run_dir: Path,
    tracker: Any,
    dist: Any,
    on_forward: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Score the adapter (and the cached base model) with lm-eval; log accuracy and forgetting.

    Under torchrun every rank takes part: each scores a share of the questions (under FSDP through the sharded
    model, its forwards in lockstep), rank 0 gathers them, so the tables equal a one-process evaluation.
    `on_forward` is called before every scoring forward (the watchdog's progress).
    """
    ranks = Ranks.current(lockstep=is_fsdp(model), on_forward=on_forward)
    with measured_scoring(model, dist.device, "lm_eval") as (plain, memory):  # the scorer's logits set this peak
        results = _evaluate_and_log(plain, tokenizer, cfg, run_dir, tracker, ranks)
    return results | memory


def _evaluate_and_log(
    model: Any, tokenizer: Any, cfg: TrainConfig, run_dir: Path, tracker: Any, ranks: Ranks | None = None
) -> dict[str, float]:
    """The eval stage of medtune.train: evaluate the trained adapter, log metrics and tables to the tracker."""
    label = "adapter" if cfg.lora.enabled else "full_finetune"
    metrics = evaluate(model, tokenizer, cfg.eval, cfg.data, run_dir, label=label, ranks=ranks)
    tracker.log(metrics, step=cfg.trainer.max_steps)
    per_group = sorted({k.rsplit("/", 1)[0] for k in metrics if k.startswith(("eval/", "forgetting/"))})
    rows = [[g, *(metrics.get(f"{g}/{c}") for c in TABLE_COLUMNS)] for g in per_group]
    tracker.log_table("eval/summary", ["group", *TABLE_COLUMNS], rows)
    report = run_dir / "eval" / "report.md"
    # the per-language accuracy and forgetting tables, at the end of the console output (once, from rank 0)
    if (ranks is None or ranks.is_main) and report.is_file():
        log.info("evaluation tables:\n%s", report.read_text(encoding="utf-8"))
    return metrics
