"""Evaluate a model (and optionally a trained adapter) on local medical tasks through lm-eval, offline.

    python -m medtune.evaluate model=gemma3_270m eval=medical eval.limit=50     # the base model, a subset
    python -m medtune.evaluate eval.adapter=runs/.../adapter                     # an adapter vs the (cached) base

The config is conf/train.yaml (same groups, same overrides); only the evaluation stage runs. Writes, under the run
dir: eval/tasks/ (generated lm-eval tasks), eval/<label>/predictions.jsonl and samples.jsonl, eval/metrics.json,
eval/report.md. From Python (the eval stage of medtune.train):

    metrics = evaluate(model, tokenizer, cfg.eval, cfg.data, run_dir, label="adapter")
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf

from medtune.config import ConfigError, DataConfig, EvalConfig, TrainConfig, register_configs, to_train_config

if TYPE_CHECKING:
    from medtune.eval.ranks import Ranks

log = logging.getLogger("medtune.evaluate")
BASE_PREFIX = "base/eval"  # base-model metrics next to an adapter's: base/eval/<task>/acc, base/eval/lang/ko/acc
TABLE_COLUMNS = ["acc", "acc_ci_low", "acc_ci_high", "n", "gold_ll_letter", "gold_ll_text", "delta_pp", "p_mcnemar"]
register_configs()


def _resolve(path: str) -> Path:
    """Resolve ${oc.env:...} in a path given outside Hydra (a dataclass built in Python keeps the raw string)."""
    if "${" in path:
        path = OmegaConf.create({"p": path}).p
    return Path(path).expanduser()


def base_cache_key(model: Any, base_fingerprint: str, tasks: list, eval_cfg: EvalConfig) -> str:
    """Hash of everything the base model's scores depend on."""
    import lm_eval

    from medtune.eval.tasks import PROMPT_VERSION

    # The transformers model under any peft wrapper: `medtune.evaluate` (plain model) and the eval stage of
    # `medtune.train` (peft model, adapter disabled) must find the same entry for the same base.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    parts = {
        "model": getattr(config, "_name_or_path", "") or type(base).__name__,
        "weights": base_fingerprint,
        "tasks": {t.name: t.fingerprint() for t in tasks},
        "fewshot": eval_cfg.num_fewshot,
        "scoring": eval_cfg.scoring,
        "prompt": PROMPT_VERSION,
        "seed": eval_cfg.seed,
        # bf16 on the H100: Gemma 3 270M scored at batch 8 vs 16 changed 60 of 8,110 base predictions (padding
        # changes the kernels' tiling), so an adapter is compared with a base scored at its own batch size.
        "batch_size": eval_cfg.batch_size,
        "lm_eval": lm_eval.__version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _scored_batch(out_dir: Path) -> int | None:
    """The batch size lm-eval finally scored at (smaller than asked after an out-of-memory retry); None if unknown."""
    path = out_dir / "lm_eval_results.json"
    return json.loads(path.read_text()).get("batch_size") if path.is_file() else None


def _score_base(
    model: Any, score_fn: Any, out_dir: Path, cache: Path | None, batch_size: int, ranks: Ranks
) -> list[dict]:
    """Score the base model (adapter disabled), reusing <cache>/<key>/predictions.jsonl when present.

    The cache key holds eval.batch_size; a base that had to be scored at a smaller batch is not cached under it.
    Under torchrun rank 0 decides and reads the cache and hands the rows to the others, so all ranks agree.
    """
    from medtune.eval.adapter import is_peft_model
    from medtune.eval.runner import read_predictions

    cached = None
    if ranks.is_main and cache is not None and (cache / "predictions.jsonl").is_file():
        log.info("base model scores reused from %s", cache)
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(cache / "predictions.jsonl", out_dir / "predictions.jsonl")
        cached = read_predictions(cache / "predictions.jsonl")
    cached = ranks.broadcast(cached)
    if cached is not None:
        return cached
    if is_peft_model(model):
        with model.disable_adapter():
            rows = score_fn(model, out_dir)
    else:
        rows = score_fn(model, out_dir)
    if not ranks.is_main:
        return rows
    scored = _scored_batch(out_dir)
    if cache is not None and scored not in (None, batch_size):
        log.warning("base model scored at batch %d, not eval.batch_size=%d: not cached", scored, batch_size)
    elif cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / "predictions.jsonl.tmp"
        shutil.copy(out_dir / "predictions.jsonl", tmp)
        tmp.replace(cache / "predictions.jsonl")  # atomic: a concurrent sweep job never reads half a file
    return rows


def _base_rows(model: Any, tokenizer: Any, eval_cfg: EvalConfig, tasks: list, score_fn: Any, out: Path, ranks: Ranks):
    """The base model's predictions (adapter disabled), from the cache when the same base was scored before."""
    from medtune.eval.adapter import base_probe_logits, fingerprint
    from medtune.eval.sanity import check_predictions

    cache = None
    if eval_cfg.cache_base:
        probe = base_probe_logits(model, tokenizer)  # a forward: every rank runs it (FSDP gathers on all)
        key = ranks.broadcast(base_cache_key(model, fingerprint(probe), tasks, eval_cfg))
        cache = _resolve(eval_cfg.cache_dir) / key
    rows = _score_base(model, score_fn, out / "base", cache, eval_cfg.batch_size, ranks)
    check_predictions(rows, eval_cfg.sanity, "base")
    return rows


def _compare(base_rows: list[dict], rows: list[dict], eval_cfg: EvalConfig, out: Path | None) -> tuple[dict, str]:
    """Forgetting metrics and table of rows against base_rows; forgetting.json under out (unless None)."""
    from medtune.eval.forgetting import forgetting, forgetting_metrics, format_forgetting

    cmp = forgetting(base_rows, rows, eval_cfg.confidence, eval_cfg.bootstrap_samples, eval_cfg.seed)
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
    from medtune.eval.ranks import Ranks
    from medtune.eval.runner import score
    from medtune.eval.tasks import build_task_data, write_task_files

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
            return score(m, tokenizer, *args, max_length=eval_cfg.max_length, ranks=ranks)

        metrics, report = _score_all(model, tokenizer, eval_cfg, tasks, score_fn, out, label, ranks)
    if ranks.is_main:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        (out / "report.md").write_text("\n\n".join(report) + "\n", encoding="utf-8")
    return metrics


def _score_all(
    model: Any, tokenizer: Any, eval_cfg: EvalConfig, tasks: list, score_fn: Any, out: Path, label: str, ranks: Ranks
) -> tuple[dict[str, float], list[str]]:
    """Base (cached) and `label` scores, their summaries and the paired comparison; metrics and report sections."""
    from medtune.eval.adapter import check_adapter_active, is_peft_model
    from medtune.eval.sanity import check_predictions
    from medtune.eval.summary import format_table, summarise

    has_adapter = is_peft_model(model)
    if has_adapter:
        check_adapter_active(model, tokenizer)
    elif label != "base":
        log.warning("'%s' has no adapter to switch off: scored alone, without a base comparison", label)
    metrics: dict[str, float] = {}
    report: list[str] = []
    base_rows = None
    if label == "base" or (has_adapter and eval_cfg.compare_base):
        base_rows = _base_rows(model, tokenizer, eval_cfg, tasks, score_fn, out, ranks)
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


def evaluate_run(
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


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def _hydra_main(dict_cfg: DictConfig) -> None:
    """Load the model (plus eval.adapter), evaluate, print the tables."""
    from hydra.core.hydra_config import HydraConfig

    try:
        cfg = to_train_config(dict_cfg)
        _preflight(cfg, dict_cfg)
    except ConfigError as err:
        log.error("invalid config: %s", err)
        sys.exit(2)
    from medtune.eval.adapter import AdapterInactiveError
    from medtune.eval.sanity import EvalSanityError

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics_dir = _evaluate_command(cfg, dict_cfg, run_dir)
    except (AdapterInactiveError, EvalSanityError) as err:
        log.error("%s", err)
        sys.exit(1)
    if metrics_dir is not None:
        print((metrics_dir / "report.md").read_text(encoding="utf-8"))
        print(f"written: {metrics_dir}")


def _preflight(cfg: TrainConfig, dict_cfg: DictConfig) -> None:
    """The checks that need no model: keys, launch (replicas allowed), tasks and their data, the adapter dir."""
    from medtune.preflight import check_known_keys, check_launch, check_tasks

    check_known_keys(dict_cfg)
    check_launch(cfg, replicas_ok=True, entry="medtune.evaluate")
    check_tasks(cfg)
    if cfg.eval.adapter and not (_resolve(cfg.eval.adapter) / "adapter_config.json").is_file():
        raise ConfigError(
            f"eval.adapter={cfg.eval.adapter}: no adapter_config.json there; point it at a saved adapter directory "
            "(a run's <run dir>/adapter)."
        )


def _evaluate_command(cfg: TrainConfig, dict_cfg: DictConfig, run_dir: Path) -> Path | None:
    """Build the model (and adapter) on every rank, shard it under sharding=fsdp, evaluate; rank 0's eval dir.

    Under torchrun each rank scores a share of the questions: with sharding=fsdp through one sharded model, with
    sharding=none or ddp through a whole copy per rank. A stalled rank stops all of them (sharding.timeout_min).
    """
    import torch

    from medtune import distributed
    from medtune.eval.adapter import load_adapter
    from medtune.eval.ranks import Ranks
    from medtune.models import build_model
    from medtune.watchdog import Watchdog

    dist = distributed.init(cfg.sharding, cfg.trainer.device, replicas_ok=True)
    if dist.is_main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(dict_cfg, resolve=True))
    watch = Watchdog(cfg.sharding.timeout_min * 60)
    try:
        torch.manual_seed(cfg.seed)  # a random-init model (model.init=random) is then the same base as in training
        model, tokenizer = build_model(cfg.model, cfg.quantization, dist.device)
        label = "base"
        if cfg.eval.adapter:
            model = load_adapter(model, cfg.eval.adapter)
            label = "adapter"
        if cfg.sharding.strategy == "fsdp":
            model = distributed.wrap_model(model, cfg.sharding, dist, cfg.trainer.loss_chunk_size)
        if dist.world_size > 1:
            watch.start()
        watch.enter("eval")
        ranks = Ranks.current(lockstep=distributed.is_fsdp(model), on_forward=watch.tick)
        with distributed.scoring_view(model) as plain:
            evaluate(plain, tokenizer, cfg.eval, cfg.data, run_dir, label=label, ranks=ranks)
    finally:
        watch.stop()
        distributed.cleanup()
    return run_dir / "eval" if dist.is_main else None


def main() -> None:
    """Console entry: name the run directory (shared by all torchrun ranks), then let Hydra run."""
    if "MEDTUNE_RUN_STAMP" not in os.environ and not any(a in ("--help", "-h", "--cfg", "-c") for a in sys.argv):
        from medtune.launch import shared_run_stamp

        os.environ["MEDTUNE_RUN_STAMP"] = shared_run_stamp().replace("/", "_") + "_eval"
    os.environ.setdefault("MEDTUNE_RUN_STAMP", time.strftime("%Y-%m-%d_%H-%M-%S") + "_eval")
    _hydra_main()


if __name__ == "__main__":
    main()
