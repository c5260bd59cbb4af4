"""torch's built-in FlashAttention-2 varlen kernel for packed rows (medtune/models/varlen_attention.py).

CPU: the attention function's plumbing through the model runs its dense reference (test_document_masks.py proves
packed == one by one with it, logits and gradients). GPU (`-m gpu`): the flash kernel against that reference,
forward and backward, with grouped heads, a sliding window and documents crossing the kernel's blocks; and tiny
Llama / Gemma 3 packed rows against one-by-one runs in bf16.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from packed_reference import compare_packed, make_examples

from medtune.config import PackingConfig
from medtune.data.packing import build_batches
from medtune.models.document_masks import (
    enable_document_masking,
    flash_varlen_kwargs,
    model_inputs,
    resolve_attention,
    unpacked_attention,
)
from medtune.models.varlen_attention import (
    NAME,
    _FlashVarlen,
    bucket_max_len,
    reference_varlen,
    varlen_attention_forward,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_bucketed_max_len_bounds_the_longest_sequence() -> None:
    assert [bucket_max_len(n, 2048) for n in (1, 63, 64, 65, 300, 1024, 1025, 2048)] == [
        64, 64, 64, 128, 512, 1024, 2048, 2048,
    ]  # fmt: skip
    assert bucket_max_len(300, 256) == 256  # never past a row
    kwargs = flash_varlen_kwargs(torch.tensor([[0] * 70 + [1] * 100 + [-1] * 30]), bucket=True)
    assert kwargs["max_length_q"] == 128 and kwargs["cu_seq_lens_q"].tolist() == [0, 70, 170, 200]


def test_refuses_padding_masks_and_what_flash_lacks() -> None:
    """A left-padded batch would be silently wrong (the kernel sees no mask): refused with the way out."""
    model = tiny_model("tiny_llama")
    enable_document_masking(model, PackingConfig(mode="packed", max_seq_len=40, attention="varlen"))
    ids = torch.randint(3, 200, (2, 12))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits  # all ones: no mask, rows are sequences
        assert torch.allclose(plain, tiny_model("tiny_llama")(input_ids=ids).logits, atol=1e-5)
        mask[1, :4] = 0
        with pytest.raises(RuntimeError, match="unpacked_attention"):
            model(input_ids=ids, attention_mask=mask)
    q = torch.randn(1, 2, 5, 8)
    with pytest.raises(NotImplementedError, match="softcapping"):
        varlen_attention_forward(torch.nn.Module(), q, q, q, None, softcap=50.0)


def test_resolution_and_eval_swap() -> None:
    assert resolve_attention("varlen", torch.device("cpu"), torch.float32) == NAME
    model = tiny_model("tiny_gemma3")
    assert enable_document_masking(model, PackingConfig(mode="packed", max_seq_len=40, attention="varlen")) == NAME
    with unpacked_attention(model) as impl:
        assert impl == "sdpa" == model.config._attn_implementation
    assert model.config._attn_implementation == NAME
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="bfloat16"):
            resolve_attention("varlen", torch.device("cuda"), torch.float32)


def test_auto_falls_back_to_flex_where_the_kernel_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto asks flash_varlen_available with the model's head size (a probe on the GPU) and takes flex if it fails;
    an explicit varlen then stops with the reason instead of failing at the first backward."""
    from medtune.models import varlen_attention

    cuda, bf16 = torch.device("cuda"), torch.bfloat16
    asked = []
    monkeypatch.setattr(varlen_attention, "flash_varlen_available", lambda *a: asked.append(a) or True)
    assert resolve_attention("auto", cuda, bf16, 256) == NAME and asked == [(cuda, bf16, 256)]
    monkeypatch.setattr(varlen_attention, "flash_varlen_available", lambda *a: False)
    assert resolve_attention("auto", cuda, bf16, 256) == "flex_attention"
    with pytest.raises(ValueError, match="heads of 256"):
        resolve_attention("varlen", cuda, bf16, 256)


def test_a_failing_probe_says_so_and_answers_no(caplog: pytest.LogCaptureFixture) -> None:
    """The probe's failure path (here the kernel has no CPU implementation): a warning naming the head size, False."""
    from medtune.models.varlen_attention import _probe

    assert _probe("cpu", torch.bfloat16, 16) is False
    assert "head_dim 16" in caplog.text and "flex" in caplog.text


def test_sliding_window_is_applied() -> None:
    """With documents longer than tiny Gemma 3's window of 8, dropping the window changes the logits."""
    cfg = PackingConfig(mode="packed", max_seq_len=40, attention="varlen")
    model = tiny_model("tiny_gemma3")
    enable_document_masking(model, cfg)
    batch = build_batches(cfg, make_examples(), micro_batch_size=2, pad_id=0, seed=0)[0]
    with torch.no_grad():
        windowed = model(**model_inputs(batch, model)).logits
        model.config.sliding_window = 10_000
        for layer in model.model.layers:
            if layer.self_attn.sliding_window:
                layer.self_attn.sliding_window = 10_000
        unwindowed = model(**model_inputs(batch, model)).logits
    assert (windowed - unwindowed).abs().max().item() > 1e-3


def _sequences(lengths: list[int], heads: int, kv_heads: int, dim: int, device: str, dtype: torch.dtype) -> tuple:
    gen = torch.Generator(device="cpu").manual_seed(0)
    total = sum(lengths)
    q, k, v = (torch.randn(total, h, dim, generator=gen).to(device, dtype) for h in (heads, kv_heads, kv_heads))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    return q, k, v, cu


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("window", "kv_heads"), [(None, 8), (100, 8), (100, 4)])
def test_flash_kernel_equals_reference_forward_and_backward(window: int | None, kv_heads: int) -> None:
    """bf16 flash varlen vs the dense reference in fp32: outputs and q/k/v gradients, documents of 1 to 700 tokens,
    with a sliding window and grouped key/value heads (Gemma 3 4B: 8 query heads, 4 key/value heads, dim 256)."""
    lengths = [1, 37, 700, 129, 256, 5, 300, 90]
    q, k, v, cu = _sequences(lengths, heads=8, kv_heads=kv_heads, dim=256, device="cuda", dtype=torch.bfloat16)
    scale = 256**-0.5
    window_left = window - 1 if window else None
    grads = {}
    for name, fn in {
        "flash": lambda a, b, c: _FlashVarlen.apply(a, b, c, cu, bucket_max_len(700, 2048), scale, window_left),
        "reference": lambda a, b, c: reference_varlen(
            a.float(), *(t.float().repeat_interleave(8 // kv_heads, dim=1) for t in (b, c)), cu, scale, window_left
        ),
    }.items():
        leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
        out = fn(*leaves)
        out.float().square().sum().backward()
        grads[name] = (out.float(), *(t.grad.float() for t in leaves))
    for got, want, what in zip(grads["flash"], grads["reference"], ("out", "dq", "dk", "dv"), strict=True):
        err = (got - want).abs().max().item() / want.abs().max().item()
        print(f"flash varlen window={window} kv_heads={kv_heads} {what}: max relative error {err:.2e}")  # pytest -s
        assert err < 2e-2, (what, err)


@pytest.mark.gpu
@needs_cuda
def test_the_probe_passes_for_gemma3_and_llama_heads() -> None:
    from medtune.models.varlen_attention import flash_varlen_available

    for head_dim in (256, 128):  # Gemma 3 (270M and 4B), Llama 3.3 70B
        assert flash_varlen_available(torch.device("cuda"), torch.bfloat16, head_dim)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma3"])
def test_bf16_varlen_on_gpu(arch: str) -> None:
    """Packed rows with the flash varlen kernel equal one-by-one sdpa runs within bf16 noise (as the flex test)."""
    cfg = PackingConfig(mode="packed", max_seq_len=512, attention="varlen")
    model = tiny_model(arch).to("cuda", torch.bfloat16)
    assert enable_document_masking(model, cfg) == NAME
    examples = make_examples([9 + (37 * i) % 120 for i in range(24)], seed=1)
    batches = build_batches(cfg, examples, micro_batch_size=2, pad_id=0, seed=0)
    reference = tiny_model(arch, attn_implementation="sdpa").to("cuda", torch.bfloat16)
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        result = compare_packed(model, batches, examples, reference)
    print(f"{arch} bf16 varlen on {torch.cuda.get_device_name()}: {result}")
    assert result["max_diff"] < 0.05, result
    assert abs(result["packed_loss"] - result["alone_loss"]) < 5e-3, result
