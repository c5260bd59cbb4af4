"""trainer.rms_norm=torch: every RMSNorm by torch's fused op gives transformers' outputs and gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from medtune.models import kernels
from medtune.models.kernels import KernelsUnavailableError, apply_fused_kernels, use_torch_rms_norm

NORMS = ("Gemma3RMSNorm", "LlamaRMSNorm")


def _norms(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if type(m).__name__ in NORMS]


def _model(arch: str, trained_norms: bool = False) -> torch.nn.Module:
    """A tiny model whose norm weights are random (Gemma 3 starts them at 0, Llama at 1: both would hide a wrong
    scale) and, unless trained_norms, frozen as under LoRA."""
    model = tiny_model(arch)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for norm in _norms(model):
            norm.weight.copy_(torch.randn(norm.weight.shape, generator=gen) * 0.5)
    for p in model.parameters():
        p.requires_grad_(False)
    for norm in _norms(model) if trained_norms else []:
        norm.weight.requires_grad_(True)
    model.get_input_embeddings().weight.requires_grad_(True)  # so every norm's input needs a gradient
    return model


def _run(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    logits = model(input_ids=ids).logits
    logits.float().square().mean().backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("trained_norms", [False, True])
@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma3"])
def test_torch_rms_norm_equals_transformers(arch: str, trained_norms: bool) -> None:
    model = _model(arch, trained_norms)
    ids = torch.randint(3, 200, (2, 12))
    want_logits, want_grads = _run(model, ids)
    fused = apply_fused_kernels(model, "none", rms_norm="torch")
    n = len(_norms(model))
    assert fused == [f"rms_norm:torch({n})"] and n >= 2 * model.config.num_hidden_layers + 1
    got_logits, got_grads = _run(model, ids)
    assert len(got_grads) == len(want_grads) == (1 + n * trained_norms)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-5, atol=1e-5)
    for got, want in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma3"])
def test_bf16_under_autocast_keeps_the_dtype_and_stays_within_a_rounding(arch: str) -> None:
    model = _model(arch)
    norm = _norms(model)[0]
    norm.to(torch.bfloat16)
    x = torch.randn(3, 5, norm.weight.shape[0], dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = norm(x)
        use_torch_rms_norm(norm)
        got = norm(x)
    assert got.dtype == want.dtype == torch.bfloat16
    # Gemma 3 rounds once as transformers does; Llama rounds once where transformers rounds twice: one bf16 step
    torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=1e-6)


def test_a_frozen_gemma_norm_sees_its_new_weight() -> None:
    """The fp32 (1 + w) kept for a frozen norm is made again when the weight changes (a loaded checkpoint)."""
    model = _model("tiny_gemma3")
    norm = _norms(model)[0]
    x = torch.randn(2, norm.weight.shape[0])
    use_torch_rms_norm(norm)
    before = norm(x)
    with torch.no_grad():
        norm.weight.copy_(norm.weight * 2 + 1)
    want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * (1 + norm.weight)
    torch.testing.assert_close(norm(x), want)
    assert not torch.allclose(norm(x), before)


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma3"])
def test_one_dispatch_per_norm_with_the_weight_in_the_input_dtype(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the switch: one op per norm call, its weight already in the input's dtype (the CUDA kernel takes
    no other; casting the input to fp32 instead cost 12% of an 8-row step on the H200)."""
    real, calls = torch.ops.aten._fused_rms_norm, []
    monkeypatch.setattr(
        kernels, "_fused_op", lambda x, shape, w, eps: calls.append((x.dtype, w.dtype)) or real(x, shape, w, eps)
    )
    model = _model(arch).to(torch.bfloat16)
    use_torch_rms_norm(model)
    with torch.no_grad():
        model(input_ids=torch.randint(3, 200, (1, 8)))
    assert calls and set(calls) == {(torch.bfloat16, torch.bfloat16)}
    assert len(calls) == len(_norms(model))  # each norm once in this forward


def test_a_heads_first_view_is_normalised_where_it_lies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gemma 3's q/k norms see [batch, heads, seq, dim] views of a [batch, seq, heads, dim] tensor: the op gets the
    contiguous layout (no copy), the result is the same view of it, the numbers and gradients those of a copy."""
    real, seen = torch.ops.aten._fused_rms_norm, []
    monkeypatch.setattr(kernels, "_fused_op", lambda x, *a: seen.append(x.is_contiguous()) or real(x, *a))
    norm = _norms(_model("tiny_gemma3", trained_norms=True))[0]
    use_torch_rms_norm(norm)
    base = torch.randn(2, 5, 3, norm.weight.shape[0], requires_grad=True)  # [batch, seq, heads, dim]
    out = norm(base.transpose(1, 2))
    assert seen == [True] and out.shape == (2, 3, 5, norm.weight.shape[0])
    assert out.transpose(1, 2).is_contiguous()  # RoPE's transpose back needs no copy either
    grad = torch.randn(out.shape)
    out.backward(grad)
    got = (out.detach(), base.grad.clone(), norm.weight.grad.clone())
    base.grad, norm.weight.grad = None, None
    copied = base.transpose(1, 2).contiguous()
    want_out = norm(copied)
    want_out.backward(grad)
    torch.testing.assert_close(got[0], want_out.detach(), rtol=0, atol=0)
    torch.testing.assert_close(got[1], base.grad, rtol=0, atol=0)
    torch.testing.assert_close(got[2], norm.weight.grad, rtol=1e-6, atol=1e-7)


def test_bad_choices_and_models_without_norms_are_refused() -> None:
    with pytest.raises(ValueError, match=r"trainer\.rms_norm='fast'"):
        apply_fused_kernels(tiny_model("tiny_llama"), "none", rms_norm="fast")
    with pytest.raises(KernelsUnavailableError, match="found no Gemma 3 or Llama RMSNorm"):
        apply_fused_kernels(torch.nn.Sequential(torch.nn.Linear(2, 2)), "none", rms_norm="torch")
    assert apply_fused_kernels(tiny_model("tiny_llama"), "none") == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma3"])
def test_on_cuda_in_bf16_as_close_to_fp32_as_transformers(arch: str) -> None:
    """The CUDA kernel (not the CPU composite): bf16 outputs and input gradients no further from an fp32 reference
    than transformers' own bf16 norm, by more than one bf16 step."""
    model = _model(arch, trained_norms=True)
    ref = _norms(model)[0].cuda()
    x32 = torch.randn(4, 2048, ref.weight.shape[0], device="cuda")
    g32 = torch.randn_like(x32)

    def out_and_grads(norm, x):
        x = x.detach().requires_grad_(True)
        norm.weight.grad = None
        y = norm(x)
        y.backward(g32.to(y.dtype))
        return y.float(), x.grad.float(), norm.weight.grad.float()

    exact = out_and_grads(ref, x32)
    bf16 = ref.to(torch.bfloat16)
    theirs = out_and_grads(bf16, x32.bfloat16())
    use_torch_rms_norm(bf16)
    ours = out_and_grads(bf16, x32.bfloat16())
    for mine, hf, want in zip(ours, theirs, exact, strict=True):
        scale = want.abs().max()
        assert (mine - want).abs().max() <= (hf - want).abs().max() + scale * 2**-8


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_a_heads_first_view_gives_what_its_copy_gives() -> None:
    """The CUDA kernel on Gemma 3's q-norm input as transformers hands it ([batch, heads, seq, dim] view of the
    projection's output): the same bf16 outputs and input gradients as on a contiguous copy, bit for bit."""
    model = _model("tiny_gemma3", trained_norms=True).cuda().to(torch.bfloat16)
    q_norm = next(m for name, m in model.named_modules() if name.endswith("q_norm"))
    use_torch_rms_norm(q_norm)
    base = torch.randn(2, 512, 4, q_norm.weight.shape[0], device="cuda", dtype=torch.bfloat16)
    grad = torch.randn(2, 4, 512, q_norm.weight.shape[0], device="cuda", dtype=torch.bfloat16)

    def run(x):
        x = x.detach().requires_grad_(True)
        q_norm.weight.grad = None
        y = q_norm(x)
        y.backward(grad)
        return y.detach(), x.grad, q_norm.weight.grad

    viewed = run(base.transpose(1, 2))
    copied = run(base.transpose(1, 2).contiguous())
    torch.testing.assert_close(viewed[0], copied[0], rtol=0, atol=0)
    torch.testing.assert_close(viewed[1], copied[1], rtol=0, atol=0)
    # the weight's gradient sums over the rows in another order: within one bf16 step
    torch.testing.assert_close(viewed[2].float(), copied[2].float(), rtol=2**-7, atol=1e-3)
