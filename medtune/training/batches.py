"""From config to batches: load sources, mix languages, tokenize, pack; and the post-training eval stage.

The data position `{"epoch": e, "batch": b}` identifies the next micro-batch, so a resumed run continues exactly
where the killed one stopped: batches are a pure function of (data, packing config, seed, epoch).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from medtune.config import ConfigError, TrainConfig
from medtune.data import assert_trainable, encode_example, load_records
from medtune.data.mix import MixResult, build_mix
from medtune.data.mix_report import format_mix_report
from medtune.data.packing import build_batches, packing_stats
from medtune.models.document_masks import enable_document_masking
from medtune.runtime.shards import unwrap
from medtune.training.trained_mix import batch_counts

log = logging.getLogger("medtune.data")


@dataclass
class DataPipeline:
    """Tokenized training and held-out examples and the way they become micro-batches on this rank."""

    make_batches: Callable[[list[dict], int], list[dict[str, torch.Tensor]]]
    train_examples: list[dict]
    heldout_examples: list[dict]
    rank: int
    world_size: int
    eval_batches: int
    report: dict[str, Any] = field(default_factory=dict)
    train_specs: list[str] = field(default_factory=list)  # "<language>/<source spec>" of each training example
    pass_counts: Counter = field(default_factory=Counter)  # rows and tokens per spec in one pass (trained_mix)
    # what the run trains on, for resume's check (training/checkpoint/resume.py): data.content.<source:split> -> a hash
    # of that source's loaded rows, data.selected -> a hash of the mix's training and held-out ids in order
    fingerprint: dict[str, str] = field(default_factory=dict)
    _cached: tuple[int, list[dict[str, torch.Tensor]]] | None = None  # (epoch, all ranks' batches)
    _heldout: list[dict[str, torch.Tensor]] | None = None
    _per_epoch: int | None = None  # epoch 0's micro-batch count, the unit of `epochs` (kept: later epochs evict 0)

    def all_batches(self, epoch: int) -> list[dict[str, torch.Tensor]]:
        """Every rank's micro-batches of one epoch, built once (the stats and the loop share them)."""
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, self.make_batches(self.train_examples, epoch))
        return self._cached[1]

    def train_stream(self, position: dict[str, int]) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, int]]]:
        """This rank's micro-batches from `position` on, endlessly, each with the position that follows its round.

        All ranks read one global stream (epoch 0's batches, then epoch 1's, ...) in rounds of `world_size`
        micro-batches, rank r taking the r-th of each round. N ranks with `grad_accum_steps` a therefore train on
        exactly the micro-batches of one process with N x a, in the same steps; no batch is dropped at an epoch's end
        and every rank always has one (an epoch whose count does not divide by N simply continues into the next).
        The position after a round is the same on every rank, so any rank's checkpoint resumes all of them.
        """
        if not self.all_batches(position["epoch"]):
            raise ValueError("the training mix gives no micro-batches; raise data_mix.budget or check the sources.")
        rounds = self._global_stream(position)
        while True:
            round_ = [next(rounds) for _ in range(self.world_size)]
            batch, _ = round_[self.rank]
            yield with_counts(batch), round_[-1][1]

    def _global_stream(self, position: dict[str, int]) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, int]]]:
        epoch, start = position["epoch"], position["batch"]
        while True:
            batches = self.all_batches(epoch)
            for i in range(start, len(batches)):
                last = i + 1 == len(batches)
                yield batches[i], {"epoch": epoch + 1, "batch": 0} if last else {"epoch": epoch, "batch": i + 1}
            epoch, start = epoch + 1, 0

    def epochs(self, micro_batches: int, start: dict[str, int] | None = None) -> float:
        """Passes over the training set after `micro_batches` more micro-batches (all ranks) from `start`."""
        if self._per_epoch is None:
            self._per_epoch = len(self.all_batches(0))
        position = start or {"epoch": 0, "batch": 0}
        return position["epoch"] + (position["batch"] + micro_batches) / self._per_epoch

    def heldout_batches(self) -> list[dict[str, torch.Tensor]]:
        """This rank's share of the first trainer.eval_batches held-out micro-batches, the same count on every rank.

        The held-out set is the one a single process scores (it does not grow with the number of ranks). When it does
        not divide by the ranks, the short ranks get a copy of a batch with every label masked: it joins the
        collectives of the forward (FSDP gathers each layer on every rank) and adds nothing to the loss or its count.
        """
        if not self.heldout_examples:
            return []
        if self._heldout is None:  # the same rows at every eval_every: built once
            self._heldout = self.make_batches(self.heldout_examples, 0)[: self.eval_batches]
        batches = self._heldout
        if not batches:  # trainer.eval_batches=0: no held-out loss
            return []
        mine = [with_counts(b) for b in batches[self.rank :: self.world_size]]
        per_rank = -(-len(batches) // self.world_size)
        return mine + [without_labels(batches[0])] * (per_rank - len(mine))


def with_counts(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add the token counts the metrics need: useful (non-pad), label-bearing, and attention context."""
    real = batch["document_ids"] >= 0  # pad positions carry document id -1
    positions = batch.get("position_ids")
    if positions is None:
        positions = torch.arange(real.shape[-1]).expand_as(real)
    out = dict(batch)
    out["n_useful_tokens"] = real.sum()
    out["n_label_tokens"] = (batch["shift_labels"] != -100).sum()
    out["ctx_tokens"] = ((positions + 1) * real).sum()  # each token attends to position+1 tokens of its document
    return out


def without_labels(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch that runs the same forward and counts nothing: every label masked, every token count zero."""
    out = with_counts(batch)
    out["shift_labels"] = torch.full_like(batch["shift_labels"], -100)
    out["labels"] = torch.full_like(batch["labels"], -100)
    for key in ("n_useful_tokens", "n_label_tokens", "ctx_tokens"):
        out[key] = torch.zeros_like(out[key])
    return out


def load_pools(cfg: TrainConfig, report: dict[str, Any]) -> dict[str, dict[str, list]]:
    """Records of every source named in data_mix.sources, by language; leakage counts go into `report`."""

    pools: dict[str, dict[str, list]] = {}
    for language, specs in cfg.data_mix.sources.items():
        pools[language] = {}
        for spec, weight in specs.items():
            source, _, split = spec.partition(":")
            if not split:
                raise ValueError(f"data_mix.sources.{language} has {spec!r}; write sources as '<source>:<split>'.")
            assert_trainable(spec, cfg.data)  # an eval split named as a training source fails here
            pools[language][spec] = load_records(source, split, cfg.data, report=report)
            if weight > 0 and cfg.data_mix.weights.get(language, 0) > 0:
                _check_not_emptied_by_guard(f"data_mix.sources.{language}", spec, report)
    return pools


def _check_not_emptied_by_guard(where: str, spec: str, report: dict[str, Any]) -> None:
    """A weighted source whose every row the leakage guard dropped: say so, instead of 'nothing can be selected'."""
    counts = {key: report[f"data/{spec}/{key}"] for key in ("loaded", "dropped_law", "dropped_exact", "dropped_near")}
    if report[f"data/{spec}/kept"] or not counts["dropped_exact"] + counts["dropped_near"]:
        return
    raise ConfigError(
        f"{where} lists {spec!r}, but the leakage guard dropped all {counts['loaded']:,} of its rows: "
        f"{counts['dropped_exact']:,} repeat an evaluation question exactly and {counts['dropped_near']:,} nearly "
        f"({counts['dropped_law']:,} law rows). Its rows are the evaluation questions (is the file of an eval split, "
        "data.eval_splits or a dataset's eval_split, declared as this training split too?): train on other rows, or "
        "set data.exclude_eval_overlap=false if training on them is meant."
    )


def data_fingerprint(pools: dict[str, dict[str, list]], train: list, heldout: list) -> dict[str, str]:
    """{data.content.<source:split>: sha256 of its loaded rows (every field), data.selected: sha256 of the mix's ids}.

    Rows are hashed as loaded (after the leakage guard), so a rewritten file, another prepare of it or another
    guard gives another hash; the selection covers what the mix drew from them (training order and held-out set).
    """
    out: dict[str, str] = {}
    for specs in pools.values():
        for spec, records in specs.items():
            digest = hashlib.sha256()
            for record in records:
                digest.update(json.dumps(record.to_row(), sort_keys=True, ensure_ascii=False).encode() + b"\n")
            out[f"data.content.{spec}"] = digest.hexdigest()[:16]
    ids = {"train": [r.id for r in train], "heldout": [r.id for r in heldout]}
    out["data.selected"] = hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]
    return out


@dataclass
class PlannedMix:
    """The rows the mix selected and their tokens: built before the model loads, so a mix that cannot be built stops
    the run before it costs a model."""

    mix: MixResult
    report: dict[str, Any]
    encode: Callable[[Any], dict]
    pools: dict[str, dict[str, list]]  # the loaded rows by language and source (the data fingerprint hashes them)


def plan_mix(cfg: TrainConfig, tokenizer: Any, is_main: bool = True) -> PlannedMix:
    """Load the sources, tokenize, select the mix (ConfigError when it cannot be met); log the realised mix."""
    encoded: dict[str, dict] = {}

    def encode(record: Any) -> dict:
        if record.id not in encoded:
            encoded[record.id] = encode_example(record, tokenizer, cfg.data, chat_template=cfg.model.chat_template)
        return encoded[record.id]

    report: dict[str, Any] = {}
    pools = load_pools(cfg, report)
    mix = build_mix(cfg.data_mix, pools, lambda r: len(encode(r)["input_ids"]))
    report.update(mix.report)
    if is_main:
        log.info("realised data mix:\n%s", format_mix_report(mix.report))
    return PlannedMix(mix, report, encode, pools)


def build_data(
    cfg: TrainConfig, tokenizer: Any, model: torch.nn.Module, dist: Any, planned: PlannedMix | None = None
) -> DataPipeline:
    """Tokenize and prepare packing for this run (the mix of `planned`, else selected here); the report has the
    realised mix."""
    planned = planned or plan_mix(cfg, tokenizer, dist.is_main)
    mix, encode = planned.mix, planned.encode
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    mbs, seed = cfg.trainer.micro_batch_size, cfg.seed

    def make_batches(examples: list[dict], epoch: int) -> list[dict[str, torch.Tensor]]:
        return build_batches(cfg.packing, examples, mbs, pad_id, seed, epoch)

    enable_document_masking(unwrap(model), cfg.packing)
    pipeline = DataPipeline(
        make_batches,
        [encode(r) for r in mix.train],
        [encode(r) for r in mix.heldout],
        dist.rank,
        dist.world_size,
        cfg.trainer.eval_batches,
        report=dict(planned.report),
        train_specs=list(mix.train_specs),
        fingerprint=data_fingerprint(planned.pools, mix.train, mix.heldout),
    )
    stats = packing_stats(pipeline.all_batches(0))
    pipeline.report.update(stats)
    pipeline.pass_counts = batch_counts(pipeline.all_batches(0), pipeline.train_specs)  # every pass holds the same
    _say_what_training_reads(cfg, pipeline, dist.world_size)
    return pipeline


def _say_what_training_reads(cfg: TrainConfig, pipeline: DataPipeline, world_size: int) -> None:
    """Passes over the data the run will make (warned above one), and micro-batches larger than the whole set."""
    tc = cfg.trainer
    batches = pipeline.all_batches(0)
    rows = sum(b["input_ids"].shape[0] for b in batches)
    if tc.micro_batch_size > rows:
        log.warning(
            "trainer.micro_batch_size=%d but the training set makes only %d rows (packing.max_seq_len=%s): every "
            "micro-batch holds the whole set, each step sees every row",
            tc.micro_batch_size,
            rows,
            cfg.packing.max_seq_len,
        )
    planned = tc.max_steps * tc.grad_accum_steps * world_size
    epochs = pipeline.epochs(planned)
    pipeline.report["data/epochs_planned"] = epochs
    pipeline.report["data/micro_batches_per_epoch"] = len(batches)
    one_pass = max(1, len(batches) // (tc.grad_accum_steps * world_size))
    if epochs < 1.0 - 1e-9:
        log.warning(
            "trainer.max_steps=%d takes %d of the %d micro-batches of one pass over the mix (%.3f passes): the run "
            "trains part of the planned mix, and the record (trained_mix/...) will show what; trainer.max_steps=%d "
            "is one pass",
            tc.max_steps,
            planned,
            len(batches),
            epochs,
            one_pass,
        )
    if epochs > 1.0 + 1e-9:
        log.warning(
            "trainer.max_steps=%d makes %.2f passes over the training set (%d micro-batches per pass): every row is "
            "seen about %.1f times; trainer.max_steps=%d is one pass",
            tc.max_steps,
            epochs,
            len(batches),
            epochs,
            one_pass,
        )
