"""Log-likelihoods that project only the continuation positions onto the vocabulary: evaluation in training memory.

lm-eval's `HFLM` takes the logits of every position of every row and a log-softmax over them: batch x length x
vocabulary values (Gemma 3: 262k), 20 GiB for Gemma 3 270M at batch 16 against 3.7 GiB to train it. A multiple-
choice continuation is one token (" A") or a few (" option text"), so `ContinuationLM` runs the decoder for the
hidden states [batch, length, hidden] and projects only the continuation positions of each request: a few rows of
logits per question, in float32. It stays an lm-eval model class (the requests, few-shot contexts, truncation and
metrics are lm-eval's), and gives `HFLM`'s log-likelihoods and greedy flags on the same requests (tested).

    lm = ContinuationLM(ranks, pretrained=model, tokenizer=tokenizer, batch_size=16)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from medtune.eval.ranks import SpreadHFLM
from medtune.models.anatomy import decoder_of, final_softcap_of, output_head_of

Request = tuple[Any, list[int], list[int]]  # ((context, continuation), context tokens, continuation tokens)


class ContinuationLM(SpreadHFLM):
    """lm-eval's HF model whose log-likelihoods come from the continuation positions' hidden states alone."""

    def _score_share(self, requests: list[Request], disable_tqdm: bool = False, override_bs: int | None = None):
        inputs = [self._input_tokens(req) for req in requests]
        order = sorted(set(inputs), key=lambda toks: (-len(toks), toks))  # longest first: one shape per batch
        row_of = {toks: i for i, toks in enumerate(order)}
        by_row: dict[int, list[int]] = {}
        for i, toks in enumerate(inputs):
            by_row.setdefault(row_of[toks], []).append(i)
        size = override_bs or (self.batch_size if isinstance(self.batch_size, int) else 8)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        head, softcap = output_head_of(self.model), final_softcap_of(self.model)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="scoring continuations")
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            hidden = self._hidden(right_padded(rows, self._pad_id(), self.device))
            for j, toks in enumerate(rows):
                for i in by_row[start + j]:
                    cont = requests[i][2]
                    results[i] = _continuation_ll(hidden[j, len(toks) - len(cont) : len(toks)], cont, head, softcap)
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
                    bar.update(1)
        bar.close()
        return results

    def _input_tokens(self, request: Request) -> tuple[int, ...]:
        _, context, continuation = request
        if not context or not continuation or len(continuation) > self.max_length:
            raise ValueError(f"cannot score a request with {len(context)} context and {len(continuation)} tokens")
        return tuple((context + continuation)[-(self.max_length + 1) :][:-1])  # HFLM's left truncation

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else (self.tokenizer.eos_token_id or 0)

    def _hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """Last hidden states [batch, length, hidden] (right padding cannot reach earlier positions: causal)."""
        self._before_forward()
        with torch.no_grad():
            return decoder_of(self.model)(input_ids=ids).last_hidden_state


def right_padded(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> torch.Tensor:
    """Token rows as one [rows, longest] tensor, right-padded (causal: padding never reaches earlier positions)."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out.to(device)


def _continuation_ll(
    hidden: torch.Tensor, continuation: list[int], head: torch.nn.Module, softcap: float | None
) -> tuple[float, bool]:
    """(sum of the continuation tokens' log-probabilities, whether each was the argmax) from their hidden states."""
    logprobs = projected_logprobs(hidden, head, softcap)
    target = torch.tensor(continuation, device=logprobs.device)
    ll = float(logprobs.gather(1, target[:, None]).sum())
    return ll, bool((logprobs.argmax(dim=-1) == target).all())


def projected_logprobs(hidden: torch.Tensor, head: torch.nn.Module, softcap: float | None) -> torch.Tensor:
    """Float32 log-probabilities over the vocabulary [positions, vocab] of a few positions' hidden states."""
    with torch.no_grad():
        logits = head(hidden).float()  # the head module: a LoRA on it counts too
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.log_softmax(logits, dim=-1)
