"""From config to batches: load sources, mix languages, tokenize, pack; and the post-training eval stage.

The data position `{"epoch": e, "batch": b}` identifies the next micro-batch, so a resumed run continues exactly
where the killed one stopped: batches are a pure function of (data, packing config, seed, epoch).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medtune.config import TrainConfig

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
    _cached: tuple[int, list[dict[str, torch.Tensor]]] | None = None  # (epoch, all ranks' batches)

    def all_batches(self, epoch: int) -> list[dict[str, torch.Tensor]]:
        """Every rank's micro-batches of one epoch, built once (the stats and the loop share them)."""
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, self.make_batches(self.train_examples, epoch))
        return self._cached[1]

    def epoch_batches(self, epoch: int) -> list[dict[str, torch.Tensor]]:
        """This rank's micro-batches of one epoch (every rank gets the same count)."""
        batches = self.all_batches(epoch)
        usable = len(batches) - len(batches) % self.world_size
        if usable == 0:
            raise ValueError(
                f"the training mix gives {len(batches)} micro-batches, fewer than the {self.world_size} ranks; "
                "raise data_mix.budget or lower trainer.micro_batch_size."
            )
        return [with_counts(b) for b in batches[self.rank : usable : self.world_size]]

    def train_stream(self, position: dict[str, int]) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, int]]]:
        """Endless micro-batches from `position`, each with the position that follows it."""
        epoch, start = position["epoch"], position["batch"]
        while True:
            batches = self.epoch_batches(epoch)
            for i in range(start, len(batches)):
                yield batches[i], {"epoch": epoch, "batch": i + 1}
            epoch, start = epoch + 1, 0

    def heldout_batches(self) -> list[dict[str, torch.Tensor]]:
        """Up to trainer.eval_batches held-out micro-batches for this rank."""
        if not self.heldout_examples:
            return []
        batches = self.make_batches(self.heldout_examples, 0)[self.rank :: self.world_size]
        return [with_counts(b) for b in batches[: self.eval_batches]]


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


def load_pools(cfg: TrainConfig, report: dict[str, Any]) -> dict[str, dict[str, list]]:
    """Records of every source named in data_mix.sources, by language; leakage counts go into `report`."""
    from medtune.data import assert_trainable, load_records

    pools: dict[str, dict[str, list]] = {}
    for language, specs in cfg.data_mix.sources.items():
        pools[language] = {}
        for spec in specs:
            source, _, split = spec.partition(":")
            if not split:
                raise ValueError(f"data_mix.sources.{language} has {spec!r}; write sources as '<source>:<split>'.")
            assert_trainable(spec, cfg.data)  # an eval split named as a training source fails here
            pools[language][spec] = load_records(source, split, cfg.data, report=report)
    return pools


def build_data(cfg: TrainConfig, tokenizer: Any, model: torch.nn.Module, dist: Any) -> DataPipeline:
    """Mix, tokenize and prepare packing for this run; the realised mix goes into the report."""
    from medtune.attention import enable_document_masking
    from medtune.data import encode_example
    from medtune.data_mix import build_mix, format_mix_report
    from medtune.distributed import unwrap
    from medtune.packing import build_batches, packing_stats

    encoded: dict[str, dict] = {}

    def encode(record: Any) -> dict:
        if record.id not in encoded:
            encoded[record.id] = encode_example(record, tokenizer, cfg.data, chat_template=cfg.model.chat_template)
        return encoded[record.id]

    report: dict[str, Any] = {}
    mix = build_mix(cfg.data_mix, load_pools(cfg, report), lambda r: len(encode(r)["input_ids"]))
    report.update(mix.report)
    if dist.is_main:
        log.info("realised data mix:\n%s", format_mix_report(mix.report))
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
        report=report,
    )
    stats = packing_stats(pipeline.all_batches(0))
    pipeline.report.update(stats)
    return pipeline


def run_eval_stage(
    cfg: TrainConfig, model: torch.nn.Module, tokenizer: Any, run_dir: Path, tracker: Any, dist: Any
) -> dict[str, Any]:
    """Score the adapter (and the cached base model) with lm-eval on rank 0; log accuracy and forgetting."""
    from medtune.attention import unpacked_attention
    from medtune.distributed import barrier, unwrap
    from medtune.evaluate import evaluate_run
    from medtune.metrics import memory_metrics, reset_peak_memory

    if cfg.sharding.strategy == "fsdp":
        log.warning(
            "eval stage skipped under sharding=fsdp: evaluate the saved adapter on one GPU with "
            "`python -m medtune.evaluate model=%s eval.adapter=%s/adapter`",
            cfg.model.name,
            run_dir,
        )
        return {}
    results: dict[str, Any] = {}
    if dist.is_main:
        plain = unwrap(model)
        device = next(plain.parameters()).device
        reset_peak_memory(device, release_cache=True)
        with unpacked_attention(plain):
            results = evaluate_run(plain, tokenizer, cfg, run_dir, tracker)
        results |= memory_metrics(device, "lm_eval")  # lm-eval's logits (batch x length x vocab) set this peak
    barrier()
    return results
