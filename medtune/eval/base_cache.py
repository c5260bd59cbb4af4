"""The base model's scores, computed once per base and reused by every adapter of a sweep.

`score_base` wraps any scorer (`score_fn(model, out_dir) -> rows`, one row per question): the final evaluation's
(lm-eval tasks, `base_predictions`) and the watch's during training (`watch.base_watch_scores`) both go through it,
so both get the lock, the verified entry and the adapter switched off from this one place.

An entry is `<eval.cache_dir>/<key>/predictions.jsonl` (the watch's: `watch-<key>/`); the key hashes everything the
scores depend on (model, weights fingerprint, prompts, and the scorer's own parts: tasks, few-shot, scoring, seed,
batch size, lm-eval version for the evaluation; the sets' exact tokens and the batch size for the watch). Sweep
jobs running side by side share entries safely: the file is written through a unique temporary name and renamed
into place (`medtune.files.atomic`), and a one-process job holds the entry's lock while it scores, so that a second
job asking for the same base waits for those scores instead of computing them again.

An entry is verified before it is used: `entry.json` beside it holds the file's SHA-256, its row count and a hash of
its question ids; every line must parse, and the rows must be those of the questions asked now (ids and count). A
damaged entry (lines lost, a torn line, another checksum) is scored again and replaced, with a warning naming it.

    rows = base_predictions(model, tokenizer, eval_cfg, tasks, score_fn, out_dir, ranks)       # the evaluation's
    entry = base_entry(model, tokenizer, eval_cfg, ranks, lambda weights: base_key(model, weights, parts))
    rows = score_base(model, score_fn, out_dir, entry, batch_size, ranks, expected_ids)       # any scorer's
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medtune.config import EvalConfig
from medtune.data.prepare import resolve_dir
from medtune.eval.adapter_check import base_probe_logits, fingerprint, is_peft_model
from medtune.eval.sanity import check_predictions
from medtune.eval.tasks import PROMPT_VERSION
from medtune.files.atomic import atomic_write_bytes, atomic_write_text, file_lock
from medtune.models.anatomy import peft_base_of

if TYPE_CHECKING:
    from medtune.eval.ranks import Ranks

log = logging.getLogger(__name__)
ScoreFn = Callable[[Any, Path | None], list[dict]]  # (model, out_dir) -> one row per question
ENTRY_FILE = "entry.json"  # beside predictions.jsonl: its sha256, rows and a hash of its question ids


def base_cache_key(model: Any, base_fingerprint: str, tasks: list, eval_cfg: EvalConfig) -> str:
    """Hash of everything the base model's scores on the evaluation's lm-eval tasks depend on."""
    import lm_eval

    parts = {
        "tasks": {t.name: t.fingerprint() for t in tasks},
        "fewshot": eval_cfg.num_fewshot,
        "scoring": eval_cfg.scoring,
        "seed": eval_cfg.seed,
        # bf16 on the H100: Gemma 3 270M scored at batch 8 vs 16 changed 60 of 8,110 base predictions (padding
        # changes the kernels' tiling), so an adapter is compared with a base scored at its own batch size.
        "batch_size": eval_cfg.batch_size,
        "scorer": eval_cfg.scorer,  # the same questions; log-likelihoods agree to ~1e-6 in fp32, not to the bit
        "lm_eval": lm_eval.__version__,
    }
    return base_key(model, base_fingerprint, parts)


def base_key(model: Any, base_fingerprint: str, parts: dict[str, Any]) -> str:
    """Hash of the base model (its name and weights), the prompt version and a scorer's own `parts`."""
    # The transformers model under any peft wrapper: `medtune.evaluate` (plain model) and the eval stage of
    # `medtune.train` (peft model, adapter disabled) must find the same entry for the same base.
    base = peft_base_of(model)
    config = getattr(base, "config", None)
    name = getattr(config, "_name_or_path", "") or type(base).__name__
    whole = {"model": name, "weights": base_fingerprint, "prompt": PROMPT_VERSION, **parts}
    return hashlib.sha256(json.dumps(whole, sort_keys=True).encode()).hexdigest()[:20]


def base_entry(
    model: Any, tokenizer: Any, eval_cfg: EvalConfig, ranks: Ranks, key_of: Callable[[str], str], prefix: str = ""
) -> Path | None:
    """`<eval.cache_dir>/<prefix><key>` for the base under `model`, key_of(weights fingerprint) the same on every
    rank; None when eval.cache_base is off."""
    if not eval_cfg.cache_base:
        return None
    probe = base_probe_logits(model, tokenizer)  # a forward: every rank runs it (FSDP gathers on all)
    return resolve_dir(eval_cfg.cache_dir) / f"{prefix}{ranks.broadcast(key_of(fingerprint(probe)))}"


def predictions_jsonl(rows: Sequence[dict]) -> bytes:
    """predictions.jsonl's bytes: one JSON line per question (every predictions file and cache entry is written so)."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def _scored_batch(out_dir: Path | None) -> int | None:
    """The batch size lm-eval finally scored at (smaller than asked after an out-of-memory retry); None if unknown."""
    path = None if out_dir is None else out_dir / "lm_eval_results.json"
    return json.loads(path.read_text()).get("batch_size") if path is not None and path.is_file() else None


def score_base(
    model: Any,
    score_fn: ScoreFn,
    out_dir: Path | None,
    cache: Path | None,
    batch_size: int | None,
    ranks: Ranks,
    expected_ids: list[str] | None = None,
) -> list[dict]:
    """Any scorer `score_fn(model, out_dir) -> rows` (one row per question, with its "id"), wrapped: the base model
    (adapter disabled) scored, or the cache entry `cache` reused when it exists and is whole (`expected_ids`: the
    questions asked now; None checks the entry's own checksum and lines only), copied to out_dir/predictions.jsonl
    (out_dir None: nothing written but the entry).

    The cache key holds the batch size; a base that had to be scored at a smaller batch is not cached under it.
    Under torchrun rank 0 decides and reads the cache and hands the rows to the others, so all ranks agree; it
    does not wait on the entry's lock there (the other ranks would sit in a collective past the process-group
    timeout), so two torchrun jobs may both score one base: the entry stays whole either way.
    """

    with file_lock(cache) if cache is not None and not ranks.spread else contextlib.nullcontext():
        cached = _read_entry(cache, out_dir, expected_ids) if ranks.is_main and cache is not None else None
        cached = ranks.broadcast(cached)
        if cached is not None:
            return cached
        with model.disable_adapter() if is_peft_model(model) else contextlib.nullcontext():
            rows = score_fn(model, out_dir)
        if ranks.is_main and cache is not None:
            _write_entry(rows, out_dir, cache, batch_size)
    return rows


def _read_entry(cache: Path, out_dir: Path | None, expected_ids: list[str] | None) -> list[dict] | None:
    """The cached base predictions (copied into out_dir); None when the entry does not exist yet or is damaged."""

    if not (cache / "predictions.jsonl").is_file():
        return None
    # Read once: the entry may be replaced meanwhile (atomically, by an identical file).
    data = (cache / "predictions.jsonl").read_bytes()
    rows, problem = _verified(data, cache / ENTRY_FILE, expected_ids)
    if problem:
        log.warning("base-score cache entry %s is damaged (%s): scoring the base again to replace it", cache, problem)
        return None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "predictions.jsonl").write_bytes(data)
    log.info("base model scores reused from %s", cache)
    return rows


def _ids_hash(ids: list[str]) -> str:
    return hashlib.sha256(json.dumps(sorted(ids), ensure_ascii=False).encode()).hexdigest()[:16]


def _verified(data: bytes, entry: Path, expected_ids: list[str] | None) -> tuple[list[dict], str | None]:
    """(rows, None) for a whole entry's predictions.jsonl `data`, else ([], what is wrong with it)."""
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


def _write_entry(rows: list[dict], out_dir: Path | None, cache: Path, batch_size: int | None) -> None:
    """Store the rows as the entry (unique temporary name, atomic rename), then its entry.json; never fails the
    scoring."""
    scored = _scored_batch(out_dir)
    if scored not in (None, batch_size):
        log.warning("base model scored at batch %d, not eval.batch_size=%d: not cached", scored, batch_size)
        return
    data = predictions_jsonl(rows)
    ids = [str(row.get("id")) for row in rows]
    entry = {"sha256": hashlib.sha256(data).hexdigest(), "rows": len(ids), "ids_sha256": _ids_hash(ids)}
    try:
        atomic_write_bytes(cache / "predictions.jsonl", data)
        atomic_write_text(cache / ENTRY_FILE, json.dumps(entry) + "\n")
    except OSError as err:  # a full or read-only cache costs a re-score next time, not this scoring
        log.warning("base model scores not cached in %s: %s", cache, err)


def base_predictions(
    model: Any, tokenizer: Any, eval_cfg: EvalConfig, tasks: list, score_fn: ScoreFn, out: Path, ranks: Ranks
) -> list[dict]:
    """The base model's predictions under out/base (adapter disabled), from the cache when scored before."""

    cache = base_entry(
        model, tokenizer, eval_cfg, ranks, lambda weights: base_cache_key(model, weights, tasks, eval_cfg)
    )
    asked = [doc["id"] for task in tasks for doc in task.docs]  # what the entry must hold, each question once
    rows = score_base(model, score_fn, out / "base", cache, eval_cfg.batch_size, ranks, asked)
    check_predictions(rows, eval_cfg.sanity, "base")
    return rows
