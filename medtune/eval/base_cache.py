"""The base model's scores, computed once per base and reused by every adapter of a sweep.

An entry is `<eval.cache_dir>/<key>/predictions.jsonl`; the key hashes everything the scores depend on (model,
weights fingerprint, tasks, prompts, few-shot, scoring, seed, batch size, lm-eval version). Sweep jobs running side
by side share entries safely: the file is written through a unique temporary name and renamed into place
(`medtune.files.atomic`), and a one-process job holds the entry's lock while it scores, so that a second job asking for
the same base waits for those scores instead of computing them again.

An entry is verified before it is used: `entry.json` beside it holds the file's SHA-256, its row count and a hash of
its question ids; every line must parse, and the rows must be those of the questions asked now (ids and count). A
damaged entry (lines lost, a torn line, another checksum) is scored again and replaced, with a warning naming it.

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
from medtune.eval.tasks import PROMPT_VERSION
from medtune.files.atomic import atomic_copy, atomic_write_text, file_lock
from medtune.models.anatomy import peft_base_of

if TYPE_CHECKING:
    from medtune.eval.ranks import Ranks

log = logging.getLogger(__name__)
ScoreFn = Callable[[Any, Path], list[dict]]
ENTRY_FILE = "entry.json"  # beside predictions.jsonl: its sha256, rows and a hash of its question ids


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
    model: Any,
    score_fn: ScoreFn,
    out_dir: Path,
    cache: Path | None,
    batch_size: int,
    ranks: Ranks,
    expected_ids: list[str] | None = None,
) -> list[dict]:
    """Score the base model (adapter disabled) into out_dir, or reuse the cache entry `cache` when it exists and is
    whole (`expected_ids`: the questions asked now; None checks the entry's own checksum and lines only).

    The cache key holds eval.batch_size; a base that had to be scored at a smaller batch is not cached under it.
    Under torchrun rank 0 decides and reads the cache and hands the rows to the others, so all ranks agree; it
    does not wait on the entry's lock there (the other ranks would sit in a collective past the process-group
    timeout), so two torchrun jobs may both score one base: the entry stays whole either way.
    """

    with file_lock(cache) if cache is not None and not ranks.spread else contextlib.nullcontext():
        cached = _read_entry(cache, out_dir, expected_ids) if ranks.is_main and cache is not None else None
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


def _read_entry(cache: Path, out_dir: Path, expected_ids: list[str] | None) -> list[dict] | None:
    """The cached base predictions, copied into out_dir; None when the entry does not exist yet or is damaged."""

    if not (cache / "predictions.jsonl").is_file():
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    # Copy once and read the copy: the entry may be replaced meanwhile (atomically, by an identical file).
    shutil.copyfile(cache / "predictions.jsonl", out_dir / "predictions.jsonl")
    rows, problem = _verified(out_dir / "predictions.jsonl", cache / ENTRY_FILE, expected_ids)
    if problem:
        log.warning("base-score cache entry %s is damaged (%s): scoring the base again to replace it", cache, problem)
        return None
    log.info("base model scores reused from %s", cache)
    return rows


def _ids_hash(ids: list[str]) -> str:
    return hashlib.sha256(json.dumps(sorted(ids), ensure_ascii=False).encode()).hexdigest()[:16]


def _verified(path: Path, entry: Path, expected_ids: list[str] | None) -> tuple[list[dict], str | None]:
    """(rows, None) for a whole entry, else ([], what is wrong with it)."""
    data = path.read_bytes()
    try:
        recorded = json.loads(entry.read_text()) if entry.is_file() else None  # None: cached before entry.json
    except (OSError, ValueError):
        return [], f"{ENTRY_FILE} is unreadable"
    if recorded is not None and hashlib.sha256(data).hexdigest() != recorded.get("sha256"):
        return [], f"predictions.jsonl does not match the checksum in {ENTRY_FILE}"
    lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            return [], f"line {number} of predictions.jsonl is torn"
    if lines and not lines[-1].endswith("\n"):  # cut at a line's end: whole JSON, yet not all of the file
        return [], f"line {len(lines)} of predictions.jsonl is torn"
    ids = [str(row.get("id")) for row in rows]
    if expected_ids is not None and (len(ids) != len(expected_ids) or _ids_hash(ids) != _ids_hash(expected_ids)):
        return [], f"{len(ids)} rows for the {len(expected_ids)} questions asked, or other question ids"
    return rows, None


def _write_entry(out_dir: Path, cache: Path, batch_size: int) -> None:
    """Store out_dir's predictions as the entry (unique temporary name, atomic rename), then its entry.json; never
    fails the eval."""
    scored = _scored_batch(out_dir)
    if scored not in (None, batch_size):
        log.warning("base model scored at batch %d, not eval.batch_size=%d: not cached", scored, batch_size)
        return
    data = (out_dir / "predictions.jsonl").read_bytes()
    ids = [str(json.loads(line).get("id")) for line in data.splitlines() if line.strip()]
    entry = {"sha256": hashlib.sha256(data).hexdigest(), "rows": len(ids), "ids_sha256": _ids_hash(ids)}
    try:
        atomic_copy(out_dir / "predictions.jsonl", cache / "predictions.jsonl")
        atomic_write_text(cache / ENTRY_FILE, json.dumps(entry) + "\n")
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
    asked = [doc["id"] for task in tasks for doc in task.docs]  # what the entry must hold, each question once
    rows = score_base(model, score_fn, out / "base", cache, eval_cfg.batch_size, ranks, asked)
    check_predictions(rows, eval_cfg.sanity, "base")
    return rows
