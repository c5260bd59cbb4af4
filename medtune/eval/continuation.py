"""lm-eval's model class over the one scorer (eval/logprobs.py): evaluation in training memory.

lm-eval's `HFLM` takes the logits of every position of every row and a log-softmax over them: batch x length x
vocabulary values (Gemma 3: 262k), 20 GiB for Gemma 3 270M at batch 16 against 3.7 GiB to train it. `ContinuationLM`
runs the decoder for the hidden states [batch, length, hidden] (`logprobs.hidden_batches`) and projects only the
continuation positions of each request: a few rows of logits per question, in float32. It stays an lm-eval model
class (the requests, few-shot contexts, truncation and metrics are lm-eval's), and gives `HFLM`'s log-likelihoods
and greedy flags on the same requests (tested).

    lm = ContinuationLM(ranks, pretrained=model, tokenizer=tokenizer, batch_size=16)
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from medtune.eval.logprobs import hidden_batches, projected_logprobs
from medtune.eval.ranks import SpreadHFLM
from medtune.models.anatomy import final_softcap_of, output_head_of

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
        for rows, hidden in hidden_batches(self.model, order, size, self._pad_id(), self.device, self._before_forward):
            for j, row in enumerate(rows):
                for i in by_row[row]:
                    cont, end = requests[i][2], len(order[row])
                    results[i] = _continuation_ll(hidden[j, end - len(cont) : end], cont, head, softcap)
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


def _continuation_ll(
    hidden: torch.Tensor, continuation: list[int], head: torch.nn.Module, softcap: float | None
) -> tuple[float, bool]:
    """(sum of the continuation tokens' log-probabilities, whether each was the argmax) from their hidden states."""
    logprobs = projected_logprobs(hidden, head, softcap)
    target = torch.tensor(continuation, device=logprobs.device)
    ll = float(logprobs.gather(1, target[:, None]).sum())
    return ll, bool((logprobs.argmax(dim=-1) == target).all())
