"""Evaluate a model (and its base, for forgetting) on local medical tasks through lm-eval; write run_dir/eval.

    metrics = evaluate(model, tokenizer, cfg.eval, cfg.data, run_dir, label="adapter")

A peft model is checked to be active, scored as `label`, and compared with itself with the adapter disabled (the
base, cached across runs). Writes eval/tasks/ (generated lm-eval tasks), eval/<label>/predictions.jsonl and
samples.jsonl, eval/metrics.json, eval/report.md and eval/forgetting.json. Under torchrun every rank calls it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from medtune.config import DataConfig, EvalConfig
from medtune.eval.adapter_check import check_adapter_active, is_peft_model
from medtune.eval.base_cache import base_predictions
from medtune.eval.forgetting import forgetting, forgetting_metrics, format_forgetting
from medtune.eval.ranks import Ranks
from medtune.eval.sanity import check_predictions
from medtune.eval.scoring import score
from medtune.eval.summary import format_table, summarise
from medtune.eval.tasks import build_task_data, write_task_files

log = logging.getLogger("medtune.evaluate")
BASE_PREFIX = "base/eval"  # base-model metrics next to an adapter's: base/eval/<task>/acc, base/eval/lang/ko/acc


def _compare(base_rows: list[dict], rows: list[dict], eval_cfg: EvalConfig, out: Path | None) -> tuple[dict, str]:
    """Forgetting metrics and table of rows against base_rows; forgetting.json under out (unless None)."""

    cmp = forgetting(
        base_rows, rows, eval_cfg.confidence, eval_cfg.bootstrap_samples, eval_cfg.seed, eval_cfg.cluster_by
    )
    if out is not None:
        (out / "forgetting.json").write_text(json.dumps(cmp, indent=1))
    return forgetting_metrics(cmp), format_forgetting(cmp, eval_cfg.confidence)


def evaluate(
    model: Any,
    tokenizer: Any,
    eval_cfg: EvalConfig,
    data_cfg: DataConfig,
    run_dir: Path,
    label: str = "adapter",
    loader: Any = None,
    ranks: Ranks | None = None,
) -> dict[str, float]:
    """Score the model (and the base, for forgetting) on eval_cfg.tasks; returns flat metrics, writes run_dir/eval.

    A peft model is checked to be active, scored as `label`, and compared with itself with the adapter disabled
    (the base, cached). A plain model with label="base" is the base; with another label it is scored alone.
    `loader` replaces medtune.data.load_records (tests). Under torchrun every rank calls this (`ranks`, default:
    the current process group): questions are scored as shares, every rank gets every metric, rank 0 writes.
    """

    ranks = ranks or Ranks.current()
    out = Path(run_dir) / "eval"
    tasks = build_task_data(
        eval_cfg.tasks, data_cfg, eval_cfg.limit, eval_cfg.num_fewshot, eval_cfg.seed, loader, eval_cfg.task_limits
    )
    with contextlib.ExitStack() as stack:
        # lm-eval reads the task files back (and caches them as datasets): one folder per rank, rank 0's is kept.
        task_dir = out / "tasks" if ranks.is_main else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        names = write_task_files(tasks, task_dir, eval_cfg.scoring, eval_cfg.num_fewshot)

        def score_fn(m: Any, where: Path) -> list[dict]:
            args = (tasks, task_dir, names, eval_cfg.scoring, eval_cfg.batch_size, where, eval_cfg.seed)
            return score(m, tokenizer, *args, max_length=eval_cfg.max_length, ranks=ranks, scorer=eval_cfg.scorer)

        metrics, report = _score_all(model, tokenizer, eval_cfg, tasks, score_fn, out, label, ranks)
    if ranks.is_main:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        (out / "report.md").write_text("\n\n".join(report) + "\n", encoding="utf-8")
    return metrics


def _score_all(
    model: Any, tokenizer: Any, eval_cfg: EvalConfig, tasks: list, score_fn: Any, out: Path, label: str, ranks: Ranks
) -> tuple[dict[str, float], list[str]]:
    """Base (cached) and `label` scores, their summaries and the paired comparison; metrics and report sections."""

    has_adapter = is_peft_model(model)
    if has_adapter:
        check_adapter_active(model, tokenizer)
    elif label != "base":
        log.warning("'%s' has no adapter to switch off: scored alone, without a base comparison", label)
    metrics: dict[str, float] = {}
    report: list[str] = []
    base_rows = None
    if label == "base" or (has_adapter and eval_cfg.compare_base):
        base_rows = base_predictions(model, tokenizer, eval_cfg, tasks, score_fn, out, ranks)
        prefix = "eval" if label == "base" else BASE_PREFIX
        metrics |= summarise(base_rows, prefix, eval_cfg.confidence)
        report += ["## base model", format_table(metrics, prefix)]
    if label != "base":
        rows = score_fn(model, out / label)
        check_predictions(rows, eval_cfg.sanity, label)
        metrics |= summarise(rows, "eval", eval_cfg.confidence)
        report += [f"## {label}", format_table(metrics, "eval")]
        if base_rows is not None:
            flat, table = _compare(base_rows, rows, eval_cfg, out if ranks.is_main else None)
            metrics |= flat
            report += [f"## {label} - base (paired, same questions)", table]
    return metrics, report
