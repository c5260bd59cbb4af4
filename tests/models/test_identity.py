"""The base identity an adapter records: the same weights match in any dtype, another seed or architecture does not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from medtune.models.identity import base_identity, identity_mismatch, read_identity, sample_index, write_identity


def test_same_weights_match_in_any_dtype_and_quantization_other_bases_do_not() -> None:
    llama = base_identity(tiny_model("tiny_llama", seed=0), "none")
    assert llama["architecture"]["model_type"] == "llama" and len(llama["weights_fingerprint"]) == 16
    assert identity_mismatch(llama, base_identity(tiny_model("tiny_llama", seed=0), "none")) is None
    bf16 = base_identity(tiny_model("tiny_llama", seed=0).to(torch.bfloat16), "nf4")
    assert identity_mismatch(llama, bf16) is None  # quantized or cast, the same base
    other_seed = identity_mismatch(llama, base_identity(tiny_model("tiny_llama", seed=1), "none"))
    assert other_seed is not None and other_seed.startswith("other weights")
    gemma = identity_mismatch(llama, base_identity(tiny_model("tiny_gemma3", seed=0), "none"))
    assert gemma is not None and "model_type llama vs gemma3_text" in gemma
    shallower = identity_mismatch(llama, base_identity(tiny_model("tiny_llama", seed=0, num_hidden_layers=1), "none"))
    assert shallower is not None and "num_hidden_layers 2 vs 1" in shallower


def test_the_record_round_trips_and_a_broken_one_names_its_file(tmp_path: Path) -> None:
    identity = base_identity(tiny_model("tiny_llama"), "none")
    path = write_identity(tmp_path, identity)
    assert read_identity(tmp_path) == json.loads(json.dumps(identity))
    assert read_identity(tmp_path / "elsewhere") is None  # saved before medtune recorded it
    path.write_text('{"architecture": ')
    with pytest.raises(ValueError, match=r"base_identity.json is not valid JSON"):
        read_identity(tmp_path)


def test_the_sample_stays_inside_embeddings_past_two_to_the_24() -> None:
    """Gemma 3 270M's embedding has 262,144 x 640 values: a float32 linspace put its last index one past the end."""
    for numel in (1, 7, 4096, 4097, 2**24 + 1, 262_144 * 640, 262_144 * 2_560):
        index = sample_index(numel)
        assert index[0] == 0 and index[-1] == numel - 1 and len(index) == min(4096, numel)
        assert bool((index[1:] > index[:-1]).all())
