"""Batching: deterministic, no token lost, labels never cross a document, efficiency reported."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from conftest import REPO
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from medtune.config import ConfigError, PackingConfig
from medtune.data.packing import IGNORE_INDEX, best_fit_decreasing, build_batches, packing_stats

CONF = REPO / "medtune" / "conf" / "packing"


def make_examples(lengths: list[int], seed: int = 0) -> list[dict]:
    """Distinct-looking samples: random ids, the first third of the labels masked."""
    rng = np.random.default_rng(seed)
    examples = []
    for i, n in enumerate(lengths):
        ids = rng.integers(3, 30000, n).tolist()
        labels = [IGNORE_INDEX] * (n // 3) + ids[n // 3 :]
        examples.append({"id": f"src:train:{i}", "input_ids": ids, "labels": labels})
    return examples


def realistic_lengths(n: int, seed: int = 0) -> list[int]:
    """Lengths like GPU.md's reference samples (median ~270, long right tail), capped below 2048."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(270), 0.45, n), 20, 2000).astype(int).tolist()


def documents(batches: list[dict]) -> list[tuple[int, dict[str, torch.Tensor]]]:
    """(example index, per-document slices) for every document, in row-major order."""
    out = []
    for batch in batches:
        k = 0
        for row in range(batch["input_ids"].shape[0]):
            doc_ids = batch["document_ids"][row]
            for doc in range(int(doc_ids.max()) + 1):
                sel = doc_ids == doc
                pieces = {key: batch[key][row][sel] for key in ("input_ids", "labels", "shift_labels", "position_ids")}
                out.append((int(batch["example_index"][k]), pieces))
                k += 1
        assert k == batch["example_index"].numel()
    return out


def cfg_for(mode: str, max_seq_len: int | None = 512, **kw) -> PackingConfig:
    return PackingConfig(mode=mode, max_seq_len=max_seq_len, **kw)


@pytest.mark.parametrize("mode", ["none", "pad_to_max", "packed"])
def test_no_token_lost_and_labels_stay_inside_documents(mode: str) -> None:
    examples = make_examples([5, 300, 511, 512, 1, 77, 200, 140, 33, 260, 2, 480])
    batches = build_batches(cfg_for(mode), examples, micro_batch_size=3, pad_id=0, seed=3)
    seen = Counter()
    for index, doc in documents(batches):
        seen[index] += 1
        ids, labels = examples[index]["input_ids"], examples[index]["labels"]
        assert doc["input_ids"].tolist() == ids
        assert doc["position_ids"].tolist() == list(range(len(ids)))
        assert doc["labels"].tolist() == [IGNORE_INDEX, *labels[1:]]  # the first token is nobody's target
        assert doc["shift_labels"].tolist() == [*labels[1:], IGNORE_INDEX]  # the last predicts nothing
    assert seen == Counter(range(len(examples)))
    for batch in batches:
        pad = batch["document_ids"] < 0
        assert (batch["input_ids"][pad] == 0).all()
        assert (batch["labels"][pad] == IGNORE_INDEX).all() and (batch["shift_labels"][pad] == IGNORE_INDEX).all()
        # the standard causal shift of `labels` gives exactly `shift_labels`
        assert torch.equal(batch["labels"][:, 1:], batch["shift_labels"][:, :-1])
        assert (batch["shift_labels"][:, -1] == IGNORE_INDEX).all()
        if mode != "none":
            assert batch["input_ids"].shape[1] == 512
        assert batch["input_ids"].shape[0] <= 3


def test_none_pads_to_the_longest_in_batch() -> None:
    examples = make_examples([5, 9, 3, 7])
    batches = build_batches(cfg_for("none", None), examples, micro_batch_size=2, pad_id=0, seed=0)
    for batch in batches:
        lengths = (batch["document_ids"] >= 0).sum(1)
        assert batch["input_ids"].shape[1] == int(lengths.max())


def test_deterministic_for_seed_and_epoch() -> None:
    examples = make_examples(realistic_lengths(300))
    cfg = cfg_for("packed", 2048)

    def run(seed: int, epoch: int) -> list[dict]:
        return build_batches(cfg, examples, micro_batch_size=2, pad_id=0, seed=seed, epoch=epoch)

    first, again = run(7, 1), run(7, 1)
    assert len(first) == len(again)
    for a, b in zip(first, again, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    order = [b["example_index"].tolist() for b in first]
    assert order != [b["example_index"].tolist() for b in run(7, 2)]  # a new epoch reshuffles
    assert order != [b["example_index"].tolist() for b in run(8, 1)]


def test_packing_beats_padding_and_reports_efficiency() -> None:
    examples = make_examples(realistic_lengths(400))
    useful = sum(len(e["input_ids"]) for e in examples)
    stats = {}
    for mode in ("none", "pad_to_max", "packed"):
        batches = build_batches(cfg_for(mode, 2048), examples, micro_batch_size=4, pad_id=0, seed=0)
        stats[mode] = packing_stats(batches)
        assert stats[mode]["packing/useful_tokens"] == useful
        assert stats[mode]["packing/documents"] == len(examples)
        label_tokens = sum(sum(t != IGNORE_INDEX for t in e["labels"][1:]) for e in examples)
        assert stats[mode]["packing/label_tokens"] == label_tokens
    packed, padded = stats["packed"], stats["pad_to_max"]
    assert packed["packing/efficiency"] > 0.97  # BFD on ~300-token samples leaves only the last rows part-empty
    assert padded["packing/efficiency"] < 0.2
    assert packed["packing/rows"] * 5 < padded["packing/rows"]
    assert packed["packing/row_tokens"] == packed["packing/rows"] * 2048


def test_hand_counted_stats() -> None:
    examples = make_examples([6, 4, 3])
    batches = build_batches(cfg_for("packed", 10), examples, micro_batch_size=8, pad_id=0, seed=0)
    stats = packing_stats(batches)
    assert stats["packing/rows"] == 2 and stats["packing/row_tokens"] == 20  # [6, 4] and [3]
    assert stats["packing/useful_tokens"] == 13 and stats["packing/efficiency"] == pytest.approx(0.65)


def test_too_long_sample_is_refused_with_the_fix() -> None:
    examples = make_examples([10, 40, 12])
    with pytest.raises(ValueError, match=r"'src:train:1' has 40 tokens.*max_seq_len=32.*split_long"):
        build_batches(cfg_for("packed", 32), examples, micro_batch_size=2, pad_id=0, seed=0)


def test_split_long_keeps_every_token_and_target() -> None:
    examples = make_examples([70, 10, 20])
    batches = build_batches(cfg_for("packed", 32, split_long=True), examples, micro_batch_size=2, pad_id=0, seed=0)
    pieces: dict[int, list[dict]] = {}
    for index, doc in documents(batches):
        pieces.setdefault(index, []).append(doc)
    ids, labels = examples[0]["input_ids"], examples[0]["labels"]
    shift = [*labels[1:], IGNORE_INDEX]
    got = {tuple(d["input_ids"].tolist()): d["shift_labels"].tolist() for d in pieces[0]}
    want = {tuple(ids[a : a + 32]): shift[a : a + 32] for a in (0, 32, 64)}
    assert got == want  # cut in row-sized pieces; a piece's last token still predicts the next piece's first
    assert packing_stats(batches)["packing/useful_tokens"] == 100


def test_truncate_drops_the_tail() -> None:
    examples = make_examples([40, 10])
    batches = build_batches(cfg_for("pad_to_max", 32, truncate=True), examples, micro_batch_size=2, pad_id=0, seed=0)
    kept = {index: doc["input_ids"].tolist() for index, doc in documents(batches)}
    assert kept[0] == examples[0]["input_ids"][:32] and kept[1] == examples[1]["input_ids"]


def test_bad_examples_name_the_example() -> None:
    with pytest.raises(ValueError, match=r"'x'.*input_ids has 3 tokens and labels 2"):
        build_batches(cfg_for("packed"), [{"id": "x", "input_ids": [1, 2, 3], "labels": [1, 2]}], 1, 0, 0)
    with pytest.raises(KeyError, match="'y' has no 'labels'"):
        build_batches(cfg_for("packed"), [{"id": "y", "input_ids": [1, 2, 3]}], 1, 0, 0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=1, max_size=80), st.integers(64, 128))
def test_best_fit_decreasing_is_a_valid_packing(lengths: list[int], capacity: int) -> None:
    bins = best_fit_decreasing(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
    # at most one bin is half empty or less: BFD (any fit-first rule) leaves no two such bins
    assert sum(sum(lengths[i] for i in b) <= capacity / 2 for b in bins) <= 1


def test_best_fit_picks_the_fullest_bin() -> None:
    # 6 opens bin A (4 left), 5 opens bin B (5 left); 4 fills A (the tightest fit), then 3 and 2 go to B
    assert best_fit_decreasing([5, 3, 6, 4, 2], 10) == [[2, 3], [0, 1, 4]]


def test_config_rules_and_yaml_choices() -> None:
    with pytest.raises(ConfigError, match=r"split_long and packing\.truncate"):
        PackingConfig(mode="packed", split_long=True, truncate=True)
    with pytest.raises(ConfigError, match=r"needs packing\.mode=packed"):
        PackingConfig(mode="pad_to_max", split_long=True)
    for path in sorted(CONF.glob("*.yaml")):
        raw = OmegaConf.load(path)
        raw.pop("defaults", None)
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PackingConfig), raw))
        assert cfg.mode == path.stem.split("_512")[0]  # packed_512: the CPU demo's packed rows
