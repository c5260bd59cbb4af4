"""The one scorer of eval/: prompt tokens -> log-probabilities at the answer positions, in training memory.

    for batch, hidden in hidden_batches(model, prompts, batch_size, pad_id, device, before_forward, max_tokens):
        logprobs = projected_logprobs(hidden[j, positions], output_head_of(model), final_softcap_of(model))

A multiple-choice answer is one token (" A") or a few (" option text"), so the decoder runs for the hidden states
[batch, length, hidden] and only the answer positions are projected onto the vocabulary (Gemma 3: 262k), in
float32: a few rows of logits per question instead of batch x length x vocabulary (20 GiB for Gemma 3 270M at
batch 16). Prompts are batched longest first, so a batch's rows are of nearly one length (little padding), up to
`batch_size` rows and `max_tokens` padded tokens per forward: the watch fills each forward to a token budget (few
large forwards: a small model on a GPU is launch-bound at a few thousand tokens), the final evaluation takes lm-eval's
rows per batch. The final evaluation (`continuation.ContinuationLM`, under lm-eval) and the watch during training
(`watch.score_watch`) both score through it; the rank spreading (`ranks.spread_scores`) and the base-score cache
(`base_cache.score_base`) wrap whichever of them runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from medtune.models.anatomy import decoder_of


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
    and at most `max_tokens` padded tokens (rows x the batch's first, longest length); a prompt longer than
    `max_tokens` is a batch of its own. Sorted, neighbours differ by a few tokens, so the padding stays small."""
    if batch_size is None and max_tokens is None:
        raise ValueError("length_batches needs batch_size or max_tokens (or both)")
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        if batches and _fits(len(batches[-1]) + 1, lengths[batches[-1][0]], batch_size, max_tokens):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _fits(rows: int, width: int, batch_size: int | None, max_tokens: int | None) -> bool:
    return (batch_size is None or rows <= batch_size) and (max_tokens is None or rows * width <= max_tokens)


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
