"""Watch sets: a seeded subset of an eval task's questions, scored in one forward per question during training.

    sets = build_watch_sets(["kormed_law", "sample_en"], 64, {}, data_cfg, tokenizer, seed=0)
    run = score_watch(model, sets, None, ranks, max_tokens=8192)       # {set: [[log p(" A"), log p(" B"), ...]]}
    base = base_watch_scores(model, tokenizer, sets, eval_cfg, ranks)   # the same with the adapter off, cached

A question is scored by the log-probability of its gold letter (" C") after the prompt, as the eval stage's
gold-letter log-likelihood is, through the same scorer (eval/logprobs.py): one forward over the prompt for the last
hidden state, and only that position is projected onto the vocabulary, which gives every option letter's
log-probability at once, hence the letter accuracy too. All sets' questions share the forwards: pooled, longest
first, each forward filled to `eval.watch_batch_tokens` prompt tokens (padding included; `eval.watch_batch_size`
caps its rows). The subset is the one `eval.limit` would draw
(`build_task_data`, seeded by eval.seed and the task name). Under torchrun the questions are spread over the ranks
and gathered by the evaluation's own wrapper (`ranks.spread_scores`; under FSDP in lockstep), and the base scores go
through the evaluation's base-score cache (`base_cache.score_base`: locked, verified, adapter off).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medtune.config import DataConfig, EvalConfig
from medtune.eval.base_cache import base_entry, base_key, score_base
from medtune.eval.logprobs import hidden_batches, last_hidden, projected_logprobs
from medtune.eval.ranks import Ranks, spread_scores
from medtune.eval.tasks import build_task_data
from medtune.models.anatomy import final_softcap_of, output_head_of

log = logging.getLogger(__name__)
Scores = dict[str, list[list[float]]]  # set name -> per question, the log-probability of each option letter
SCORER_VERSION = "watch-gold-letter-v2"  # part of the base cache key: bump when the computation changes


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
    data_cfg: DataConfig,
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


def score_watch(
    model: Any,
    sets: Sequence[WatchSet],
    batch_size: int | None,
    ranks: Ranks | None = None,
    max_tokens: int | None = None,
) -> Scores:
    """Every option letter's log-probability for every question, on every rank (questions spread over ranks); all
    sets' questions in shared forwards of at most `batch_size` rows and `max_tokens` padded tokens."""
    ranks = ranks or Ranks()
    # spread_scores' requests: ((options), prompt tokens, no answer tokens): the answer is at the prompt's end
    requests = [(o, p, ()) for s in sets for p, o in zip(s.prompts, s.options, strict=True)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        flat = spread_scores(
            ranks,
            requests,
            lambda mine: _score_share(model, mine, (batch_size, max_tokens), ranks, device),
            lambda: last_hidden(model, [(0,)], 0, device, lambda: None),  # joins the other ranks' collectives
            device,
        )
    finally:
        model.train(was_training)
    out, start = {}, 0
    for s in sets:
        out[s.name], start = flat[start : start + len(s.prompts)], start + len(s.prompts)
    return out


def _score_share(
    model: Any,
    requests: list[tuple[list[int], tuple[int, ...], tuple]],
    batching: tuple[int | None, int | None],
    ranks: Ranks,
    device: Any,
) -> list[list[float]]:
    """This rank's questions: the option letters' log-probabilities at each prompt's last position."""
    head, softcap = output_head_of(model), final_softcap_of(model)
    prompts = [req[1] for req in requests]
    out: list[list[float]] = [[] for _ in requests]
    announce = functools.partial(ranks.before_forward, device)
    for batch, hidden in hidden_batches(model, prompts, batching[0], 0, device, announce, batching[1]):
        last = torch.stack([hidden[j, len(prompts[i]) - 1] for j, i in enumerate(batch)])
        logprobs = projected_logprobs(last, head, softcap)  # the batch's answer positions in one projection
        for j, i in enumerate(batch):
            out[i] = logprobs[j, requests[i][0]].tolist()
    return out


def base_watch_scores(
    model: Any, tokenizer: Any, sets: Sequence[WatchSet], eval_cfg: EvalConfig, ranks: Ranks
) -> Scores:
    """The base model's scores (adapter disabled) through the base-score cache (`base_cache.score_base`, as the
    evaluation's): the entry `<eval.cache_dir>/watch-<key>/` is verified before it is reused, replaced if damaged."""
    size, tokens = eval_cfg.watch_batch_size, eval_cfg.watch_batch_tokens
    # bf16 kernels tile by batch shape (see base_cache.base_cache_key); the sets' fingerprints hold ids and tokens
    parts = {"scorer": SCORER_VERSION, "sets": {s.name: s.fingerprint() for s in sets}, "batch_size": size}
    parts["batch_tokens"] = tokens
    entry = base_entry(model, tokenizer, eval_cfg, ranks, lambda weights: base_key(model, weights, parts), "watch-")

    def score_fn(plain: Any, out_dir: Path | None) -> list[dict]:
        scores = score_watch(plain, sets, size, ranks, tokens)
        return [
            {"task": s.name, "id": qid, "letter_lls": lls}
            for s in sets
            for qid, lls in zip(s.ids, scores[s.name], strict=True)
        ]

    rows = score_base(model, score_fn, None, entry, size, ranks, [qid for s in sets for qid in s.ids])
    out: Scores = {s.name: [] for s in sets}
    for row in rows:
        out[row["task"]].append(row["letter_lls"])
    return out
