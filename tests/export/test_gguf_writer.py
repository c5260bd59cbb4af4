"""The GGUF layer of medtune.export: tensor layouts llama.cpp expects, rope scaling, q8_0, tokenizers, size estimate."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from conftest import tiny_model
from fixtures.export_run import make_run
from transformers import PreTrainedTokenizerFast

from medtune.export import check
from medtune.export.check import TOLERANCES, compare, reference
from medtune.export.cli import main
from medtune.export.gguf_loader import load_gguf
from medtune.export.gguf_tokenizer import tokenizer_fields
from medtune.export.gguf_writer import (
    check_gguf_supported,
    estimate_gguf_bytes,
    gguf_tensors,
    permute_rope_rows,
    write_gguf,
)
from medtune.models.byte_tokenizer import build_byte_tokenizer

GEMMA3_LLAMACPP = {"num_hidden_layers": 6, "layer_types": None}


@pytest.fixture(autouse=True)
def few_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check, "QUESTIONS_PER_LANGUAGE", 2)


def _tokenizer_for(model: torch.nn.Module) -> PreTrainedTokenizerFast:
    c = model.config
    return build_byte_tokenizer(c.vocab_size, c.pad_token_id, c.bos_token_id, c.eos_token_id)


def _round_trip(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, tmp_path: Path, quant: str = "f16"):
    tokenizer.save_pretrained(tmp_path / "tok")
    model.config.save_pretrained(tmp_path / "tok")
    path = tmp_path / f"m-{quant}.gguf"
    write_gguf(model, tokenizer, tmp_path / "tok", path, quant, {"name": "test"})
    return path, *load_gguf(path)


def test_rope_rows_are_reordered_the_way_transformers_reads_them_back() -> None:
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weight = torch.randn(4 * 16, 64)
    undo = LlamaTensorProcessor(config={})._reverse_permute_weights
    assert np.array_equal(undo(permute_rope_rows(weight, 4).numpy(), 4, 4), weight.numpy())
    kv = torch.randn(2 * 16, 64)
    assert np.array_equal(undo(permute_rope_rows(kv, 2).numpy(), 4, 2), kv.numpy())


def test_gemma_norms_are_written_plus_one_and_names_come_from_the_gguf_map() -> None:
    model = tiny_model("tiny_gemma3", **GEMMA3_LLAMACPP)
    params = dict(model.named_parameters())
    tensors = {gguf_name: (hf_name, t) for hf_name, gguf_name, t in gguf_tensors(model)}
    hf_name, norm = tensors["blk.0.post_ffw_norm.weight"]
    assert hf_name == "model.layers.0.post_feedforward_layernorm.weight"
    assert torch.equal(norm, params[hf_name] + 1)
    assert torch.equal(tensors["blk.0.ffn_down.weight"][1], params["model.layers.0.mlp.down_proj.weight"])
    assert "output.weight" not in tensors  # tied to token_embd, as llama.cpp expects for Gemma
    assert len(tensors) == len(params)


@pytest.mark.parametrize(
    ("arch", "overrides"),
    [
        (
            "tiny_llama",
            {
                "rope_parameters": {
                    "rope_type": "llama3",
                    "rope_theta": 10000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64,
                }
            },
        ),
        ("tiny_llama", {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}}),
        (
            "tiny_gemma3",
            GEMMA3_LLAMACPP
            | {
                "rope_parameters": {
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                    "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 8.0},
                }
            },
        ),
    ],
    ids=["llama3", "llama-linear", "gemma3-linear"],
)
def test_rope_scaling_survives_the_round_trip(tmp_path: Path, arch: str, overrides: dict) -> None:
    model = tiny_model(arch, initializer_range=0.2, **overrides)
    tokenizer = _tokenizer_for(model)
    _, loaded, loaded_tokenizer = _round_trip(model, tokenizer, tmp_path)
    report = compare(reference(model, tokenizer), loaded, loaded_tokenizer, TOLERANCES["f16"])
    assert report["passed"], report["failures"]
    if arch == "tiny_llama":
        assert torch.allclose(loaded.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq, rtol=1e-6)


def test_q8_0_export_passes_within_its_tolerance(tmp_path: Path) -> None:
    run = make_run(tmp_path, "tiny_gemma3", **GEMMA3_LLAMACPP)
    assert main([str(run), "--format", "gguf", "--quant", "q8_0"]) == 0
    folder = run / "export" / "gguf-q8_0"
    record = json.loads((folder / "export_check.json").read_text())
    assert record["passed"] and record["weight_type"] == "q8_0" and record["tolerance_nats"]["max_nats"] == 2.0
    types = {t.tensor_type.name for t in gguf.GGUFReader(folder / f"{run.name}-q8_0.gguf").tensors}
    assert types == {"Q8_0", "F32"}


@pytest.mark.parametrize(("quant", "ffn"), [("f16", 128), ("q8_0", 128), ("q8_0", 100)])
def test_size_estimate_matches_the_tensor_data(tmp_path: Path, quant: str, ffn: int) -> None:
    model = tiny_model("tiny_llama", intermediate_size=ffn)
    tokenizer = _tokenizer_for(model)
    path, loaded, loaded_tokenizer = _round_trip(model, tokenizer, tmp_path, quant)
    reader = gguf.GGUFReader(path)
    tensor_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    assert estimate_gguf_bytes([tuple(p.shape) for p in model.parameters()], quant) == tensor_bytes
    if ffn == 100:  # rows of 100 do not split into q8_0's blocks of 32: that matrix stays f16, the model still loads
        types = {t.name: t.tensor_type.name for t in reader.tensors}
        assert types["blk.0.ffn_down.weight"] == "F16" and types["blk.0.ffn_up.weight"] == "Q8_0"
        assert compare(reference(model, tokenizer), loaded, loaded_tokenizer, TOLERANCES["q8_0"])["passed"]


def _sentencepiece_style_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A Gemma-like tokenizer: BPE over '▁'-spelled text with byte fallback, specials first."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    vocab |= {f"<0x{b:02X}>": 4 + b for b in range(256)}
    pieces = ["▁", "a", "e", "i", "o", "n", "t", "s", "r", "h", "▁t", "he", "▁the", "in", "▁a", "er", "on"]
    vocab |= {p: len(vocab) + i for i, p in enumerate(pieces)}
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("i", "n"), ("▁", "a"), ("e", "r"), ("o", "n")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    tok.add_special_tokens(["<pad>", "<eos>", "<bos>", "<unk>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    fast.unk_token = "<unk>"
    assert len(fast) <= vocab_size
    return fast


def test_sentencepiece_style_tokenizer_round_trips_through_gguf(tmp_path: Path) -> None:
    model = tiny_model("tiny_gemma3", initializer_range=0.2, **GEMMA3_LLAMACPP)
    tokenizer = _sentencepiece_style_tokenizer(model.config.vocab_size)
    fields = tokenizer_fields(tokenizer, model.config.vocab_size)
    assert (fields.model, fields.pre) == ("llama", "default")
    assert fields.types[2] == gguf.TokenType.CONTROL and fields.types[4 + 0x41] == gguf.TokenType.BYTE
    assert fields.types[-1] == gguf.TokenType.UNUSED  # padding up to the embedding rows
    normal = [s for s, t in zip(fields.scores, fields.types, strict=True) if t == gguf.TokenType.NORMAL]
    assert normal == sorted(normal, reverse=True)  # earlier tokens merge first, as in Gemma's vocabulary
    _, _, loaded_tokenizer = _round_trip(model, tokenizer, tmp_path)
    for text in ("the tin heron", "인슐린을 분비하는 기관은?", " Answer: B"):
        assert loaded_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"], text


@pytest.mark.parametrize("arch", ["gemma3_4b", "llama3_3_70b"])
def test_the_papers_architectures_are_writable(arch: str) -> None:
    from medtune.models.build import arch_config

    check_gguf_supported(arch_config(arch))  # Gemma 3 4B: linear rope x8 on global layers; Llama 3.3: llama3 rope
