"""Watch sets: a seeded subset of an eval task's questions, scored in one forward per question during training.

    sets = build_watch_sets(["kormed_law", "sample_en"], 64, {}, data_cfg, tokenizer, seed=0)
    run = score_watch(model, sets, batch_size=16, ranks=ranks)         # {set: [[log p(" A"), log p(" B"), ...]]}
    base = base_watch_scores(model, tokenizer, sets, eval_cfg, ranks)   # the same with the adapter off, cached

A question is scored by the log-probability of its gold letter (" C") after the prompt, as the eval stage's
gold-letter log-likelihood is: one forward over the prompt for the last hidden state, and only that position is
projected onto the vocabulary (the continuation-position idea of eval/continuation.py), which gives every option
letter's log-probability at once, hence the letter accuracy too. The subset is the one `eval.limit` would draw
(`build_task_data`, seeded by eval.seed and the task name). Under torchrun the questions are spread over the ranks
and gathered as in eval/ranks.py; under FSDP every rank runs as many forwards as the busiest one (lockstep).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medtune.config import EvalConfig
from medtune.data.prepare import resolve_dir
from medtune.eval.adapter_check import base_probe_logits, fingerprint, is_peft_model
from medtune.eval.continuation import projected_logprobs, right_padded
from medtune.eval.ranks import Ranks, assign_shares
from medtune.eval.tasks import PROMPT_VERSION, build_task_data
from medtune.files.atomic import atomic_write_text, file_lock
from medtune.models.anatomy import decoder_of, final_softcap_of, output_head_of, peft_base_of

log = logging.getLogger(__name__)
Scores = dict[str, list[list[float]]]  # set name -> per question, the log-probability of each option letter
SCORER_VERSION = "watch-gold-letter-v1"  # part of the base cache key: bump when the computation changes


@dataclass
class WatchSet:
    """One watch set: prompts as token ids, the token of each option letter after them, the gold option."""

    name: str
    language: str
    domain: str  # medical sets pool into lang/<language>; general probes stay on their own
    ids: list[str]
    prompts: list[tuple[int, ...]]
    options: list[list[int]]
    golds: list[int]

    def fingerprint(self) -> str:
        """Hash of what is scored (ids and the exact tokens), for the base cache key."""
        blob = json.dumps([self.name, self.ids, self.prompts, self.options, self.golds])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_watch_sets(
    names: Sequence[str],
    limit: int | None,
    limits: Mapping[str, int],
    data_cfg: Any,
    tokenizer: Any,
    seed: int = 0,
    max_length: int = 2048,
    loader: Callable[..., list[Any]] | None = None,
) -> list[WatchSet]:
    """The seeded subset of each named eval task (`limit` questions, `limits` per task), tokenized for scoring."""
    tasks = build_task_data(names, data_cfg, limit, seed=seed, loader=loader, task_limits=limits)
    out = []
    for task in tasks:
        prompts, options, cut = [], [], 0
        for doc in task.docs:
            context = tokenizer(doc["prompt"]).input_ids
            options.append(
                [_letter_token(tokenizer, doc["prompt"], context, letter, task.name) for letter in doc["letters"]]
            )
            cut += len(context) > max_length
            prompts.append(tuple(context[-max_length:]))  # the end holds the options and the cue
        if cut:
            log.warning("watch set %s: %d prompts cut to their last %d tokens", task.name, cut, max_length)
        ids, golds = [d["id"] for d in task.docs], [d["answer_index"] for d in task.docs]
        out.append(WatchSet(task.name, task.spec.language, task.spec.domain, ids, prompts, options, golds))
    return out


def _letter_token(tokenizer: Any, prompt: str, context: list[int], letter: str, name: str) -> int:
    """The one token " <letter>" becomes after the prompt (tokenized as lm-eval does: the whole, minus the prompt)."""
    whole = tokenizer(prompt + " " + letter).input_ids
    if whole[: len(context)] != context or len(whole) != len(context) + 1:
        raise ValueError(
            f"watch set {name}: the tokenizer does not turn ' {letter}' after the prompt into one token of its own "
            f"({len(whole) - len(context)} tokens); the watch scores the gold letter at one position."
        )
    return whole[-1]


def score_watch(model: Any, sets: Sequence[WatchSet], batch_size: int, ranks: Ranks | None = None) -> Scores:
    """Every option letter's log-probability for every question, on every rank (questions spread over ranks)."""
    ranks = ranks or Ranks()
    items = [(p, o) for s in sets for p, o in zip(s.prompts, s.options, strict=True)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        shares = assign_shares([(None, p, ()) for p, _ in items], ranks.world_size)
        mine = _score_share(model, [items[i] for i in shares[ranks.rank]], batch_size, ranks, device)
        if ranks.lockstep and ranks.spread:
            while ranks.any(False, device):  # another rank still scores: join its forwards' collectives
                _forward(model, [(0,)], ranks, device, announce=False)
        flat: list[list[float]] = [[] for _ in items]
        for share, results in zip(shares, ranks.gather(mine), strict=True):
            for i, result in zip(share, results, strict=True):
                flat[i] = result
    finally:
        model.train(was_training)
    out, start = {}, 0
    for s in sets:
        out[s.name], start = flat[start : start + len(s.prompts)], start + len(s.prompts)
    return out


def _score_share(
    model: Any, items: list[tuple[tuple[int, ...], list[int]]], batch_size: int, ranks: Ranks, device: torch.device
) -> list[list[float]]:
    """This rank's questions, longest first (one shape per batch), in their given order."""
    head, softcap = output_head_of(model), final_softcap_of(model)
    order = sorted(range(len(items)), key=lambda i: (-len(items[i][0]), i))
    out: list[list[float]] = [[] for _ in items]
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        hidden = _forward(model, [items[i][0] for i in batch], ranks, device)
        last = torch.stack([hidden[j, len(items[i][0]) - 1] for j, i in enumerate(batch)])
        logprobs = projected_logprobs(last, head, softcap)
        for j, i in enumerate(batch):
            out[i] = logprobs[j, items[i][1]].tolist()
    return out


def _forward(
    model: Any, rows: list[tuple[int, ...]], ranks: Ranks, device: torch.device, announce: bool = True
) -> torch.Tensor:
    """The decoder's last hidden states of right-padded rows; says "still scoring" first under lockstep."""
    if announce and ranks.lockstep and ranks.spread:
        ranks.any(True, device)
    if ranks.on_forward is not None:
        ranks.on_forward()
    with torch.no_grad():
        return decoder_of(model)(input_ids=right_padded(rows, 0, device)).last_hidden_state


def base_watch_scores(
    model: Any, tokenizer: Any, sets: Sequence[WatchSet], eval_cfg: EvalConfig, ranks: Ranks
) -> Scores:
    """The base model's scores (adapter disabled), from `<eval.cache_dir>/watch-<key>.json` when scored before.

    As with the eval stage's base cache: one process holds the entry's lock while it scores; under torchrun rank 0
    reads the entry and hands it to the others, without waiting on the lock (see base_cache.score_base).
    """
    cache = None
    if eval_cfg.cache_base:
        probe = base_probe_logits(model, tokenizer)  # a forward: every rank runs it (FSDP gathers on all)
        key = ranks.broadcast(watch_cache_key(model, fingerprint(probe), sets, eval_cfg.watch_batch_size))
        cache = resolve_dir(eval_cfg.cache_dir) / f"watch-{key}.json"
    with file_lock(cache) if cache is not None and not ranks.spread else contextlib.nullcontext():
        stored = _read_entry(cache, sets) if cache is not None and ranks.is_main else None
        stored = ranks.broadcast(stored)
        if stored is not None:
            return stored
        with model.disable_adapter() if is_peft_model(model) else contextlib.nullcontext():
            scores = score_watch(model, sets, eval_cfg.watch_batch_size, ranks)
        if cache is not None and ranks.is_main:
            try:
                atomic_write_text(cache, json.dumps({"key": cache.stem, "scores": scores}))
            except OSError as err:  # a full or read-only cache costs a re-score next time, not the run
                log.warning("watch base scores not cached in %s: %s", cache, err)
    return scores


def watch_cache_key(model: Any, base_fingerprint: str, sets: Sequence[WatchSet], batch_size: int) -> str:
    """Hash of everything the base model's watch scores depend on."""
    config = getattr(peft_base_of(model), "config", None)
    parts = {
        "scorer": SCORER_VERSION,
        "model": getattr(config, "_name_or_path", "") or type(peft_base_of(model)).__name__,
        "weights": base_fingerprint,
        "sets": {s.name: s.fingerprint() for s in sets},  # ids, subset and the exact tokens
        "prompt": PROMPT_VERSION,
        "batch_size": batch_size,  # bf16 kernels tile by batch shape (see base_cache.base_cache_key)
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _read_entry(cache: Path, sets: Sequence[WatchSet]) -> Scores | None:
    """The cached scores when the entry exists and covers every question of `sets`; else None."""
    if not cache.is_file():
        return None
    try:
        scores = json.loads(cache.read_text())["scores"]
    except (OSError, ValueError, KeyError) as err:
        log.warning("watch base cache %s unreadable (%s): scoring again", cache, err)
        return None
    if any(len(scores.get(s.name, [])) != len(s.prompts) for s in sets):
        return None
    log.info("watch: base model scores reused from %s", cache)
    return scores
