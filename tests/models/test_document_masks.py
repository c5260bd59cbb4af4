"""Packed rows must give every document exactly what it gets alone: logits, loss and gradients, on every layer type."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model
from packed_reference import LENGTHS, compare_packed, make_examples

from medtune.config import PackingConfig
from medtune.data.packing import build_batches
from medtune.models.document_masks import (
    enable_document_masking,
    flash_varlen_kwargs,
    layer_windows,
    model_inputs,
    resolve_attention,
    unpacked_attention,
)

ARCHS = ["tiny_llama", "tiny_gemma3"]
IMPLS = {
    "eager": "eager",
    "sdpa": "sdpa",
    "flex": "flex_attention",
    "varlen": "medtune_varlen",
}  # varlen: CPU reference


def eager_flex() -> contextlib.AbstractContextManager:
    """Run transformers' compiled flex attention eagerly: same mask_mod and BlockMask, no C++ compile on CPU."""
    warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
    return torch.compiler.set_stance("force_eager")


def packed_setup(arch: str, attention: str, max_seq_len: int = 40, lengths: list[int] = LENGTHS) -> tuple:
    """A tiny model with document masking on, and packed batches of the test examples."""
    cfg = PackingConfig(mode="packed", max_seq_len=max_seq_len, attention=attention)
    model = tiny_model(arch)
    impl = enable_document_masking(model, cfg)
    examples = make_examples(lengths)
    batches = build_batches(cfg, examples, micro_batch_size=2, pad_id=0, seed=0)
    assert any(int(b["document_ids"].max()) > 0 for b in batches), "test data must put several documents in a row"
    return model, impl, examples, batches


@pytest.mark.parametrize("attention", list(IMPLS))
@pytest.mark.parametrize("arch", ARCHS)
def test_packed_equals_one_by_one(arch: str, attention: str) -> None:
    model, impl, examples, batches = packed_setup(arch, attention)
    assert impl == IMPLS[attention] == model.config._attn_implementation
    context = eager_flex() if attention == "flex" else contextlib.nullcontext()
    with torch.no_grad(), context:
        result = compare_packed(model, batches, examples)
    assert result["max_diff"] < 1e-5, result
    assert abs(result["packed_loss"] - result["alone_loss"]) < 1e-5, result


@pytest.mark.parametrize("arch", ARCHS)
def test_restarting_position_ids_alone_do_not_isolate(arch: str) -> None:
    """The naive recipe leaks across documents (the failure this module exists for); masks must stay necessary."""
    model, _, _, batches = packed_setup(arch, "sdpa")
    batch = next(b for b in batches if int(b["document_ids"].max()) > 0)
    ids, pos = batch["input_ids"], batch["position_ids"]
    useful = batch["document_ids"] >= 0
    with torch.no_grad():
        exact = model(**model_inputs(batch, model)).logits
        naive_default_cache = model(input_ids=ids, position_ids=pos).logits
        naive_ones_mask = model(input_ids=ids, position_ids=pos, attention_mask=torch.ones_like(ids), use_cache=False)
    for naive in (naive_default_cache, naive_ones_mask.logits):
        assert (naive[useful] - exact[useful]).abs().max().item() > 1e-2


def test_one_mask_for_all_layers_breaks_gemma3_sliding_layers() -> None:
    """A single 4D block mask isolates documents but drops Gemma 3's sliding window; the per-type dict keeps it."""
    model, _, _, batches = packed_setup("tiny_gemma3", "sdpa")
    with torch.no_grad():
        inputs = model_inputs(batches[0], model)
        assert set(inputs["attention_mask"]) == {"full_attention", "sliding_attention"}
        inputs["attention_mask"] = inputs["attention_mask"]["full_attention"]
        single = model(**inputs).logits
        good = model(**model_inputs(batches[0], model)).logits
    useful = batches[0]["document_ids"] >= 0
    assert (single[useful] - good[useful]).abs().max().item() > 1e-3


@pytest.mark.parametrize("attention", ["sdpa", "varlen"])
def test_gradients_match_one_by_one(attention: str) -> None:
    """Training sees the same gradient: summed packed loss vs summed one-by-one losses, Gemma 3."""
    model, _, examples, batches = packed_setup("tiny_gemma3", attention)
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    for batch in batches:
        logits = model(**model_inputs(batch, model)).logits
        F.cross_entropy(logits.flatten(0, 1), batch["shift_labels"].flatten(), reduction="sum").backward()
    packed = [p.grad.clone() for p in params]
    model.zero_grad()
    for example in examples:
        logits = model(input_ids=torch.tensor([example["input_ids"]]), use_cache=False).logits[0]
        F.cross_entropy(logits[:-1], torch.tensor(example["labels"][1:]), reduction="sum").backward()
    for got, want in zip(packed, [p.grad for p in params], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["none", "pad_to_max"])
def test_padded_modes_need_no_mask(mode: str) -> None:
    """One right-padded sample per row: plain causal attention is exact, so no mask (sdpa keeps its fast kernel)."""
    cfg = PackingConfig(mode=mode, max_seq_len=40)
    model = tiny_model("tiny_gemma3", attn_implementation="sdpa")
    assert enable_document_masking(model, cfg) == "sdpa"
    examples = make_examples()
    batches = build_batches(cfg, examples, micro_batch_size=3, pad_id=0, seed=1)
    assert "attention_mask" not in model_inputs(batches[0], model)
    with torch.no_grad():
        result = compare_packed(model, batches, examples)
    assert result["max_diff"] < 1e-5 and abs(result["packed_loss"] - result["alone_loss"]) < 1e-5


def test_lora_wrapped_model_is_masked_too() -> None:
    """enable_document_masking and model_inputs reach through a peft wrapper."""
    from peft import LoraConfig, get_peft_model

    model, _, examples, batches = packed_setup("tiny_llama", "eager")
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    enable_document_masking(lora, PackingConfig(mode="packed", max_seq_len=40, attention="sdpa"))
    assert lora.get_base_model().config._attn_implementation == "sdpa"
    with torch.no_grad():
        assert compare_packed(lora, batches, examples)["max_diff"] < 1e-5


def test_eval_swaps_flex_for_sdpa_and_restores_it() -> None:
    """The eval stage runs padded lm-eval batches with sdpa (same logits), then training's flex comes back."""
    from peft import LoraConfig, get_peft_model

    model = tiny_model("tiny_gemma3").eval()
    ids = torch.randint(3, 200, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding, as lm-eval batches have
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    lora.get_base_model().set_attn_implementation("flex_attention")
    with unpacked_attention(lora) as impl, torch.no_grad():
        assert impl == "sdpa" == lora.get_base_model().config._attn_implementation
        got = lora(input_ids=ids, attention_mask=mask).logits
    assert lora.get_base_model().config._attn_implementation == "flex_attention"
    assert torch.allclose(got[mask.bool()], want[mask.bool()], atol=1e-5)


def test_packed_batch_refused_without_masking() -> None:
    cfg = PackingConfig(mode="packed", max_seq_len=40)
    batches = build_batches(cfg, make_examples(), micro_batch_size=2, pad_id=0, seed=0)
    with pytest.raises(RuntimeError, match="enable_document_masking"):
        model_inputs(batches[0], tiny_model("tiny_llama"))


def test_flash_varlen_kwargs_cut_at_every_document_and_row() -> None:
    document_ids = torch.tensor([[0, 0, 0, 1, 1, -1], [0, 0, 0, 0, 0, 0], [0, 1, 1, 1, 2, 2]])
    kwargs = flash_varlen_kwargs(document_ids)
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 3, 5, 6, 12, 13, 16, 18]
    assert kwargs["cu_seq_lens_q"].dtype == torch.int32 and kwargs["max_length_q"] == 6


def test_layer_windows_and_resolution() -> None:
    assert layer_windows(tiny_model("tiny_llama").config) == {"full_attention": None}
    assert layer_windows(tiny_model("tiny_gemma3").config) == {"full_attention": None, "sliding_attention": 8}
    from transformers import Gemma3Config

    config = tiny_model("tiny_gemma3").config
    multimodal = Gemma3Config(text_config=config.to_dict())  # MedGemma's layout: layer types on the text config
    assert layer_windows(multimodal) == {"full_attention": None, "sliding_attention": 8}
    config.layer_types = ["chunked_attention"] * len(config.layer_types)
    with pytest.raises(NotImplementedError, match="chunked_attention"):
        layer_windows(config)
    assert resolve_attention("auto", torch.device("cpu"), torch.float32) == "sdpa"
    assert resolve_attention("flex", torch.device("cpu"), torch.float32) == "flex_attention"


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_compiled_flex_on_cpu(arch: str) -> None:
    """The compiled (inductor C++) flex kernel with block sparsity: rows of 300 tokens span several 128-blocks."""
    lengths = [9 + (37 * i) % 120 for i in range(12)]  # 9..128 tokens: documents cross 128-token blocks
    model, _, examples, batches = packed_setup(arch, "flex", max_seq_len=300, lengths=lengths)
    with torch.no_grad():
        result = compare_packed(model, batches, examples)
    assert result["max_diff"] < 1e-5 and abs(result["packed_loss"] - result["alone_loss"]) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_flex_on_gpu(arch: str) -> None:
    """bf16 compiled flex on CUDA: packed within bf16 noise of one-by-one, and far from the naive recipe."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cfg = PackingConfig(mode="packed", max_seq_len=512, attention="flex")
    model = tiny_model(arch).to("cuda", torch.bfloat16)
    assert enable_document_masking(model, cfg) == "flex_attention"
    lengths = [9 + (37 * i) % 120 for i in range(24)]  # 9..128 tokens: documents cross flex's 128-token blocks
    examples = make_examples(lengths, seed=1)
    batches = build_batches(cfg, examples, micro_batch_size=2, pad_id=0, seed=0)
    # the one-by-one reference runs sdpa: compiled flex recompiles per sample length, and with dynamic shapes on
    # a head_dim-16 toy model inductor finds no kernel (NoValidChoicesError on H100, torch 2.11)
    reference = tiny_model(arch, attn_implementation="sdpa").to("cuda", torch.bfloat16)
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        result = compare_packed(model, batches, examples, reference)
        batch = batches[0]
        ids, pos = batch["input_ids"].cuda(), batch["position_ids"].cuda()
        naive = model(input_ids=ids, position_ids=pos).logits.float()  # default cache: no isolation
        good = model(**model_inputs(batch, model)).logits.float()
    useful = batch["document_ids"].cuda() >= 0
    result["naive_max_diff"] = (naive[useful] - good[useful]).abs().max().item()
    print(f"{arch} bf16 flex on {torch.cuda.get_device_name()}: {result}")  # for the GPU report (pytest -s)
    # logits of magnitude ~1: bf16 keeps ~3 significant digits, a few roundings per layer
    assert result["max_diff"] < 0.05, result
    assert abs(result["packed_loss"] - result["alone_loss"]) < 5e-3, result
    assert result["naive_max_diff"] > 5 * result["max_diff"], result
