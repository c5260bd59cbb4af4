"""The one scorer of eval/: prompt tokens -> log-probabilities at the answer positions, in training memory.

    for batch, hidden in hidden_batches(model, prompts, batch_size, pad_id, device, before_forward, max_tokens):
        logprobs = projected_logprobs(hidden[j, positions], output_head_of(model), final_softcap_of(model))

A multiple-choice answer is one token (" A") or a few (" option text"), so the decoder runs for the hidden states
[batch, length, hidden] and only the answer positions are projected onto the vocabulary (Gemma 3: 262k), in
float32: a few rows of logits per question instead of batch x length x vocabulary (20 GiB for Gemma 3 270M at
batch 16). Prompts are batched longest first, up to `batch_size` rows and `max_tokens` padded tokens per forward:
the final evaluation takes lm-eval's rows per batch; the watch gives a token budget, within which the batches are
cut where padding costs more than another forward (few large forwards: a small model on a GPU is launch-bound at a
few thousand tokens, and padding is work too). The final evaluation (`continuation.ContinuationLM`, under lm-eval)
and the watch during training (`watch.score_watch`) both score through it; the rank spreading
(`ranks.spread_scores`) and the base-score cache (`base_cache.score_base`) wrap whichever of them runs.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from medtune.models.anatomy import decoder_of

# A forward's fixed cost (kernel launches, LoRA and quantization wrappers, Python) in tokens of work, weighed
# against padding when a token budget's batches are cut. In experiments/results/mix_watch (Gemma 3 270M, H200) the
# watch's forwards of ~3,000 tokens ran at about half of training's per-token speed: a fixed cost of about that size.
FORWARD_TOKENS = 2048


def hidden_batches(
    model: Any,
    prompts: Sequence[Sequence[int]],
    batch_size: int | None,
    pad_id: int,
    device: torch.device,
    before_forward: Callable[[], None],
    max_tokens: int | None = None,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Prompts longest first in batches (`length_batches`): (the batch's prompt indices, the decoder's last hidden
    states [batch, longest, hidden]), `before_forward` called before each forward."""
    for batch in length_batches([len(p) for p in prompts], batch_size, max_tokens):
        yield batch, last_hidden(model, [prompts[i] for i in batch], pad_id, device, before_forward)


def length_batches(lengths: Sequence[int], batch_size: int | None, max_tokens: int | None) -> list[list[int]]:
    """Indices longest first (equal lengths in their given order), cut into batches of at most `batch_size` rows
    and, with `max_tokens`, at most that many padded tokens (rows x the batch's first, longest length; a longer
    prompt is a batch of its own). Without `max_tokens` each batch is filled to `batch_size` rows (lm-eval's
    batches); with it the cuts are the cheapest (`_cheapest_cuts`): padding against the number of forwards."""
    if batch_size is None and max_tokens is None:
        raise ValueError("length_batches needs batch_size or max_tokens (or both)")
    order = sorted(range(len(lengths)), key=lambda k: (-lengths[k], k))
    if max_tokens is None:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    cuts = _cheapest_cuts([lengths[i] for i in order], batch_size or len(order), max_tokens)
    return [order[a:b] for a, b in itertools.pairwise(cuts)]


def _cheapest_cuts(desc: Sequence[int], max_rows: int, max_tokens: int) -> list[int]:
    """Batch boundaries [0, ..., n] over lengths sorted longest first that minimise padded tokens plus
    FORWARD_TOKENS per forward (dynamic programming over contiguous batches; each batch within both limits)."""
    n = len(desc)
    best, cut_at = [0.0] + [float("inf")] * n, [0] * (n + 1)  # best[j]: cheapest cost of the first j prompts
    for start in range(n):
        width = desc[start]
        rows_max = max(1, min(max_rows, max_tokens // width))
        for end in range(start + 1, min(n, start + rows_max) + 1):
            cost = best[start] + (end - start) * width + FORWARD_TOKENS
            if cost < best[end]:
                best[end], cut_at[end] = cost, start
    cuts = [n]
    while cuts[-1] > 0:
        cuts.append(cut_at[cuts[-1]])
    return cuts[::-1]


def last_hidden(
    model: Any, rows: Sequence[Sequence[int]], pad_id: int, device: torch.device, before_forward: Callable[[], None]
) -> torch.Tensor:
    """The decoder's last hidden states [rows, longest, hidden] of right-padded rows (causal: padding cannot reach
    earlier positions)."""
    before_forward()
    with torch.no_grad():
        return decoder_of(model)(input_ids=right_padded(rows, pad_id, device)).last_hidden_state


def right_padded(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> torch.Tensor:
    """Token rows as one [rows, longest] tensor, right-padded (causal: padding never reaches earlier positions)."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out.to(device)


def projected_logprobs(hidden: torch.Tensor, head: torch.nn.Module, softcap: float | None) -> torch.Tensor:
    """Float32 log-probabilities over the vocabulary [positions, vocab] of a few positions' hidden states."""
    with torch.no_grad():
        logits = head(hidden).float()  # the head module: a LoRA on it counts too
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.log_softmax(logits, dim=-1)
