"""Scoring spread over the ranks of a torchrun job: each rank scores a share of the questions, rank 0 gets them all.

Every rank builds the same lm-eval requests (same tasks, same few-shot draws: lm-eval draws few-shot examples with
one generator per task, in document order, so each rank must see every document). `spread_scores` then has each
rank compute the log-likelihoods of its share only and gathers everyone's, so `simple_evaluate` returns on every rank
exactly the results of a one-process run, and accuracy, intervals and paired tests are computed over all questions
at once. It is the one spreading, around every scorer: lm-eval's (`SpreadHFLM`), ours (`continuation.ContinuationLM`)
and the watch's (`watch.score_watch`).

    ranks = Ranks.current(lockstep=True)          # under FSDP: each forward gathers layers on every rank
    lm = SpreadHFLM(ranks, pretrained=model, tokenizer=tokenizer, batch_size=8)
    results = spread_scores(ranks, requests, score_share, idle_forward, device)   # any scorer's share -> all

Shares are whole context groups (lm-eval scores all options of a question from one forward), balanced by tokens.
Under FSDP a forward is a sequence of collectives, so ranks must run the same number of them: before each
forward every rank says whether it still has work (one all-reduce), and a rank whose share is done runs a one-token
forward for as long as another rank has work ("lockstep").
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist
from lm_eval.models.huggingface import HFLM

log = logging.getLogger(__name__)


@dataclass
class Ranks:
    """How an evaluation is spread over processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    lockstep: bool = False  # every forward joins collectives (FSDP): ranks must run equally many
    on_forward: Callable[[], None] | None = None  # progress callback (the run's watchdog)

    @classmethod
    def current(cls, lockstep: bool = False, on_forward: Callable[[], None] | None = None) -> Ranks:
        """This process's place in the initialised process group (rank 0 of 1 without one)."""
        if tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1:
            return cls(tdist.get_rank(), tdist.get_world_size(), lockstep, on_forward)
        return cls(on_forward=on_forward)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def spread(self) -> bool:
        return self.world_size > 1

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.spread:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.spread:
            return [obj]
        out: list[Any] = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when `flag` is true on some rank."""
        tensor = torch.tensor([1.0 if flag else 0.0], device=device)
        tdist.all_reduce(tensor)
        return bool(tensor.item() > 0)

    def before_forward(self, device: torch.device) -> None:
        """Say this rank still has work (lockstep under FSDP) and report progress; before every scoring forward."""
        if self.lockstep and self.spread:
            self.any(True, device)
        if self.on_forward is not None:
            self.on_forward()

    def barrier(self) -> None:
        if self.spread:
            tdist.barrier()

    @contextlib.contextmanager
    def as_local_main(self) -> Iterator[None]:
        """LOCAL_RANK=0 for the block: lm-eval's simple_evaluate returns its results only where LOCAL_RANK is 0
        (it takes torchrun's other ranks for tensor-parallel helpers); here every rank holds all results."""
        saved = os.environ.get("LOCAL_RANK")
        os.environ["LOCAL_RANK"] = "0"
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("LOCAL_RANK", None)
            else:
                os.environ["LOCAL_RANK"] = saved


def assign_shares(requests: Sequence[Any], world_size: int) -> list[list[int]]:
    """Request indices per rank: whole context groups, largest first to the rank with the fewest tokens so far."""
    groups: dict[tuple, list[int]] = {}
    for i, req in enumerate(requests):
        groups.setdefault(tuple(req[1]), []).append(i)  # req = ((context, continuation), ctx_tokens, cont_tokens)
    sized = sorted(
        groups.values(),
        key=lambda idx: (-sum(len(requests[i][1]) + len(requests[i][2]) for i in idx), idx[0]),
    )
    shares: list[list[int]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for idx in sized:
        r = min(range(world_size), key=lambda k: (load[k], k))
        shares[r].extend(idx)
        load[r] += sum(len(requests[i][1]) + len(requests[i][2]) for i in idx)
    return [sorted(s) for s in shares]


def spread_scores(
    ranks: Ranks,
    requests: Sequence[Any],
    score_share: Callable[[list[Any]], list[Any]],
    idle_forward: Callable[[], None],
    device: torch.device,
) -> list[Any]:
    """Every request's result, in request order, on every rank: each rank scores its share (`assign_shares`; a
    request is ((context, continuation), prompt tokens, answer tokens)); under lockstep a rank whose share is done
    runs `idle_forward` for as long as another rank still scores."""
    shares = assign_shares(requests, ranks.world_size)
    mine = score_share([requests[i] for i in shares[ranks.rank]])
    if ranks.lockstep and ranks.spread:
        while ranks.any(False, device):  # another rank still scores: join its forwards' collectives
            if ranks.on_forward is not None:
                ranks.on_forward()
            idle_forward()
    out: list[Any] = [None] * len(requests)
    for share, share_results in zip(shares, ranks.gather(mine), strict=True):
        for i, result in zip(share, share_results, strict=True):
            out[i] = result
    return out


class SpreadHFLM(HFLM):
    """lm-eval's HF model on an in-memory model; log-likelihoods computed as shares over ranks, then gathered."""

    def __init__(self, ranks: Ranks, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ranks = ranks

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, override_bs: int | None = None):
        quiet, scored = disable_tqdm or not self.ranks.is_main, []

        def share(mine: list) -> list:
            scored.append(len(mine))
            return self._score_share(mine, quiet, override_bs)

        out = spread_scores(self.ranks, requests, share, self._idle_forward, self.device)
        if self.ranks.spread:
            log.info("scored %d of %d requests on rank %d", scored[0], len(requests), self.ranks.rank)
        return out

    def _idle_forward(self) -> None:
        """A one-token forward that only joins the other ranks' collectives (lockstep under FSDP)."""
        HFLM._model_call(self, torch.full((1, 1), self.prefix_token_id, dtype=torch.long, device=self.device))

    def _score_share(self, requests: list, disable_tqdm: bool, override_bs: int | None) -> list:
        """This rank's log-likelihoods (lm-eval's own computation; ContinuationLM replaces it)."""
        return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)

    def _before_forward(self) -> None:
        self.ranks.before_forward(self.device)

    def _model_call(self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: Any = None):
        self._before_forward()
        return super()._model_call(inps, attn_mask, labels)
