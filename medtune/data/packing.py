"""Turn tokenized examples into training batches: padded per batch, padded to a fixed length, or packed.

Modes (`medtune/conf/packing/*.yaml`):
- `none`: one sample per row, each micro-batch padded to its longest sample.
- `pad_to_max`: one sample per row, every row padded to `max_seq_len` (the paper's naive baseline).
- `packed`: best-fit-decreasing bin packing of whole samples into rows of `max_seq_len`; each sample is a
  *document* that attends only to itself (see medtune/models/document_masks.py, which builds the masks).

A packed row of three documents A (3 tokens), B (2), C (2) and one pad token, and the attention it must get
(row = query, column = key, 1 = may attend):

    tokens        a0 a1 a2 b0 b1 c0 c1 <pad>
    position_ids   0  1  2  0  1  0  1  0
    document_ids   0  0  0  1  1  2  2 -1
    labels         -  x  x  -  x  -  x  -      (- = -100: a document's first token is never a target)
    shift_labels   x  x  -  x  -  x  -  -      (target of each position; - at a document's last token)

          a0 a1 a2 b0 b1 c0 c1 p
      a0   1
      a1   1  1
      a2   1  1  1
      b0            1
      b1            1  1
      c0                  1
      c1                  1  1
      p                         1

Every batch is a dict of tensors:
- `input_ids`, `position_ids` (restart at 0 per document), `document_ids` (-1 on padding) of shape [rows, seq_len];
- `labels`: the per-token labels (-100 on padding, on masked prompt tokens and at each document's first token), so a
  standard causal shift (`logits[:, :-1]` vs `labels[:, 1:]`) never crosses a document boundary;
- `shift_labels`: the same targets already aligned to the position that predicts them (-100 at each document's
  last token and on padding). The trainer should use these: `loss(hidden[:, t], shift_labels[:, t])` for every t.
  They equal `labels[:, 1:]` except where `split_long` cut a sample: the last token of a piece still predicts the
  first token of the next piece, which only `shift_labels` keeps;
- `example_index`: for each document in row-major order, the index of its example in the input list.

Samples longer than `max_seq_len` are refused with an error, unless `packing.split_long` (packed mode: cut into
row-sized pieces packed as separate documents) or `packing.truncate` (drop the tail; changes the data) is set.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medtune.config import PackingConfig
from medtune.data.schema import IGNORE_INDEX

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Doc:
    """One document of a row: a whole sample or one piece of a split sample."""

    example_index: int
    input_ids: np.ndarray
    labels: np.ndarray  # first token already -100
    shift_labels: np.ndarray  # aligned to positions; computed on the whole sample before any cut


def _as_array(value: Any, key: str, example_id: str) -> np.ndarray:
    """A 1-D int64 array from a list or tensor, or a clear error naming the example and key."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=np.int64)
    if array.ndim != 1:
        raise ValueError(f"example {example_id!r}: {key} must be a flat list of token ids, got shape {array.shape}.")
    return array


def _docs_of(cfg: PackingConfig, index: int, example: dict) -> list[_Doc]:
    """Check one example and cut it into documents that fit a row (one document unless split_long)."""
    example_id = str(example.get("id", f"#{index}"))
    for key in ("input_ids", "labels"):
        if key not in example:
            raise KeyError(f"example {example_id!r} has no {key!r}; examples come from medtune.data.encode_example.")
    ids = _as_array(example["input_ids"], "input_ids", example_id)
    labels = _as_array(example["labels"], "labels", example_id)
    if len(ids) == 0 or len(ids) != len(labels):
        raise ValueError(
            f"example {example_id!r}: input_ids has {len(ids)} tokens and labels {len(labels)}; "
            "both must be the same, non-zero length."
        )
    max_len = cfg.max_seq_len
    if max_len is not None and len(ids) > max_len:
        if cfg.truncate:
            ids, labels = ids[:max_len], labels[:max_len]
        elif not cfg.split_long:
            raise ValueError(
                f"example {example_id!r} has {len(ids)} tokens, more than packing.max_seq_len={max_len}. "
                "Raise packing.max_seq_len, set packing.split_long=true (packed mode; keeps every token), "
                "or packing.truncate=true (drops the tail), or filter long samples out upstream."
            )
    shift = np.full_like(labels, IGNORE_INDEX)
    shift[:-1] = labels[1:]
    step = max_len if max_len is not None else len(ids)
    docs = []
    for start in range(0, len(ids), step):
        piece_labels = labels[start : start + step].copy()
        piece_labels[0] = IGNORE_INDEX  # nothing before it inside the document predicts it
        docs.append(_Doc(index, ids[start : start + step], piece_labels, shift[start : start + step]))
    return docs


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Pack item lengths into bins of `capacity`: longest first, each into the fullest bin it fits; returns indices."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep input order
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (free tokens, bin index)
    for i in order:
        need = lengths[i]
        if need > capacity:
            raise ValueError(f"item {i} has length {need} > bin capacity {capacity}.")
        slot = bisect.bisect_left(free, (need, -1))
        if slot == len(free):
            bins.append([i])
            bin_index, left = len(bins) - 1, capacity - need
        else:
            left, bin_index = free.pop(slot)
            bins[bin_index].append(i)
            left -= need
        if left > 0:
            bisect.insort(free, (left, bin_index))
    return bins


def _collate(rows: list[list[_Doc]], seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Lay documents out in rows of `seq_len`; the pad tail of a row is a document of its own (id -1)."""
    shape = (len(rows), seq_len)
    input_ids = np.full(shape, pad_id, dtype=np.int64)
    labels = np.full(shape, IGNORE_INDEX, dtype=np.int64)
    shift_labels = np.full(shape, IGNORE_INDEX, dtype=np.int64)
    position_ids = np.zeros(shape, dtype=np.int64)
    document_ids = np.full(shape, -1, dtype=np.int64)
    example_index = []
    for r, docs in enumerate(rows):
        start = 0
        for d, doc in enumerate(docs):
            end = start + len(doc.input_ids)
            input_ids[r, start:end] = doc.input_ids
            labels[r, start:end] = doc.labels
            shift_labels[r, start:end] = doc.shift_labels
            position_ids[r, start:end] = np.arange(end - start)
            document_ids[r, start:end] = d
            example_index.append(doc.example_index)
            start = end
        position_ids[r, start:] = np.arange(seq_len - start)  # pads count from 0 like any other document
    arrays = {
        "input_ids": input_ids,
        "labels": labels,
        "shift_labels": shift_labels,
        "position_ids": position_ids,
        "document_ids": document_ids,
        "example_index": np.asarray(example_index, dtype=np.int64),
    }
    return {key: torch.from_numpy(value) for key, value in arrays.items()}


def build_batches(
    cfg: PackingConfig,
    examples: list[dict],
    micro_batch_size: int,
    pad_id: int,
    seed: int,
    epoch: int = 0,
) -> list[dict[str, torch.Tensor]]:
    """Micro-batches for one epoch, in an order fixed by (packing.seed, seed, epoch); see the module docstring."""
    if micro_batch_size <= 0:
        raise ValueError(f"micro_batch_size={micro_batch_size} must be > 0.")
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed={seed} and epoch={epoch} must be >= 0.")
    rng = np.random.default_rng([cfg.seed, seed, epoch])
    docs_per_example = [_docs_of(cfg, i, ex) for i, ex in enumerate(examples)]
    docs = [doc for group in docs_per_example for doc in group]
    docs = [docs[i] for i in rng.permutation(len(docs))]  # so equal-length ties differ between epochs
    if cfg.mode == "packed":
        bins = best_fit_decreasing([len(d.input_ids) for d in docs], cfg.max_seq_len)
        rows = [[docs[i] for i in b] for b in bins]
        rows = [rows[i] for i in rng.permutation(len(rows))]  # BFD leaves rows sorted by their first length
    else:
        rows = [[doc] for doc in docs]
    batches = []
    for start in range(0, len(rows), micro_batch_size):
        chunk = rows[start : start + micro_batch_size]
        longest = max(sum(len(d.input_ids) for d in row) for row in chunk)
        batches.append(_collate(chunk, longest if cfg.mode == "none" else cfg.max_seq_len, pad_id))
    n_long = sum(len(ex["input_ids"]) > (cfg.max_seq_len or float("inf")) for ex in examples)
    if n_long and epoch == 0:  # once, not at every epoch
        what = "split into row-sized pieces" if cfg.split_long else "truncated"
        log.warning("packing: %d samples longer than %d tokens %s", n_long, cfg.max_seq_len, what)
    return batches


def packing_stats(batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Flat, JSON-ready counts: useful (non-pad) tokens, row tokens, efficiency = useful / row, label tokens, rows."""
    useful = sum(int((b["document_ids"] >= 0).sum()) for b in batches)
    row_tokens = sum(b["input_ids"].numel() for b in batches)
    return {
        "packing/useful_tokens": useful,
        "packing/row_tokens": row_tokens,
        "packing/efficiency": useful / row_tokens if row_tokens else 0.0,
        "packing/label_tokens": sum(int((b["shift_labels"] != IGNORE_INDEX).sum()) for b in batches),
        "packing/rows": sum(b["input_ids"].shape[0] for b in batches),
        "packing/documents": sum(b["example_index"].numel() for b in batches),
        "packing/batches": len(batches),
    }
