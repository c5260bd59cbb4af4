"""The base model's scores, computed once per base and reused by every adapter of a sweep.

An entry is `<eval.cache_dir>/<key>/predictions.jsonl`; the key hashes everything the scores depend on (model,
weights fingerprint, tasks, prompts, few-shot, scoring, seed, batch size, lm-eval version). Sweep jobs running side
by side share entries safely: the file is written through a unique temporary name and renamed into place
(`medtune.files.atomic`), and a one-process job holds the entry's lock while it scores, so that a second job asking for
the same base waits for those scores instead of computing them again.

    rows = base_predictions(model, tokenizer, eval_cfg, tasks, score_fn, out_dir, ranks)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medtune.config import EvalConfig
from medtune.data.prepare import resolve_dir
from medtune.eval.adapter_check import base_probe_logits, fingerprint, is_peft_model
from medtune.eval.sanity import check_predictions
from medtune.eval.scoring import read_predictions
from medtune.eval.tasks import PROMPT_VERSION
from medtune.files.atomic import atomic_copy, file_lock
from medtune.models.anatomy import peft_base_of

if TYPE_CHECKING:
    from medtune.eval.ranks import Ranks

log = logging.getLogger(__name__)
ScoreFn = Callable[[Any, Path], list[dict]]


def base_cache_key(model: Any, base_fingerprint: str, tasks: list, eval_cfg: EvalConfig) -> str:
    """Hash of everything the base model's scores depend on."""
    import lm_eval

    # The transformers model under any peft wrapper: `medtune.evaluate` (plain model) and the eval stage of
    # `medtune.train` (peft model, adapter disabled) must find the same entry for the same base.
    base = peft_base_of(model)
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
        "scorer": eval_cfg.scorer,  # the same questions; log-likelihoods agree to ~1e-6 in fp32, not to the bit
        "lm_eval": lm_eval.__version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _scored_batch(out_dir: Path) -> int | None:
    """The batch size lm-eval finally scored at (smaller than asked after an out-of-memory retry); None if unknown."""
    path = out_dir / "lm_eval_results.json"
    return json.loads(path.read_text()).get("batch_size") if path.is_file() else None


def score_base(
    model: Any, score_fn: ScoreFn, out_dir: Path, cache: Path | None, batch_size: int, ranks: Ranks
) -> list[dict]:
    """Score the base model (adapter disabled) into out_dir, or reuse the cache entry `cache` when it exists.

    The cache key holds eval.batch_size; a base that had to be scored at a smaller batch is not cached under it.
    Under torchrun rank 0 decides and reads the cache and hands the rows to the others, so all ranks agree; it
    does not wait on the entry's lock there (the other ranks would sit in a collective past the process-group
    timeout), so two torchrun jobs may both score one base: the entry stays whole either way.
    """

    with file_lock(cache) if cache is not None and not ranks.spread else contextlib.nullcontext():
        cached = _read_entry(cache, out_dir) if ranks.is_main and cache is not None else None
        cached = ranks.broadcast(cached)
        if cached is not None:
            return cached
        if is_peft_model(model):
            with model.disable_adapter():
                rows = score_fn(model, out_dir)
        else:
            rows = score_fn(model, out_dir)
        if ranks.is_main and cache is not None:
            _write_entry(out_dir, cache, batch_size)
    return rows


def _read_entry(cache: Path, out_dir: Path) -> list[dict] | None:
    """The cached base predictions, copied into out_dir; None when the entry does not exist yet."""

    if not (cache / "predictions.jsonl").is_file():
        return None
    log.info("base model scores reused from %s", cache)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Copy once and read the copy: the entry may be replaced meanwhile (atomically, by an identical file).
    shutil.copyfile(cache / "predictions.jsonl", out_dir / "predictions.jsonl")
    return read_predictions(out_dir / "predictions.jsonl")


def _write_entry(out_dir: Path, cache: Path, batch_size: int) -> None:
    """Store out_dir's predictions as the entry (unique temporary name, atomic rename); never fails the eval."""
    scored = _scored_batch(out_dir)
    if scored not in (None, batch_size):
        log.warning("base model scored at batch %d, not eval.batch_size=%d: not cached", scored, batch_size)
        return
    try:
        atomic_copy(out_dir / "predictions.jsonl", cache / "predictions.jsonl")
    except OSError as err:  # a full or read-only cache costs a re-score next time, not this evaluation
        log.warning("base model scores not cached in %s: %s", cache, err)


def base_predictions(
    model: Any, tokenizer: Any, eval_cfg: EvalConfig, tasks: list, score_fn: ScoreFn, out: Path, ranks: Ranks
) -> list[dict]:
    """The base model's predictions under out/base (adapter disabled), from the cache when scored before."""

    cache = None
    if eval_cfg.cache_base:
        probe = base_probe_logits(model, tokenizer)  # a forward: every rank runs it (FSDP gathers on all)
        key = ranks.broadcast(base_cache_key(model, fingerprint(probe), tasks, eval_cfg))
        cache = resolve_dir(eval_cfg.cache_dir) / key
    rows = score_base(model, score_fn, out / "base", cache, eval_cfg.batch_size, ranks)
    check_predictions(rows, eval_cfg.sanity, "base")
    return rows
