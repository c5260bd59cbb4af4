"""lora.fused: the adapter's output added inside B's matmul gives peft's outputs and gradients, or peft's forward."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from medtune.models.fused_lora import fuse_lora_adds


def _lora(arch: str, dtype: torch.dtype = torch.float32, **extra: object) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, **extra)
    return get_peft_model(tiny_model(arch).to(dtype), config, autocast_adapter_dtype=False)


def _run(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    logits = model(input_ids=ids).logits
    logits.float().square().mean().backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = []
    real = torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma3"])
def test_fused_equals_peft_outputs_and_gradients(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _lora(arch, lora_dropout=0.0)
    ids = torch.randint(3, 200, (2, 12))
    want_logits, want_grads = _run(model, ids)
    assert fuse_lora_adds(model) == 7 * model.config.num_hidden_layers  # q k v o gate up down
    calls = _spy(monkeypatch)
    got_logits, got_grads = _run(model, ids)
    assert len(calls) == 7 * model.config.num_hidden_layers  # every adapted layer took the fused path
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-5, atol=1e-5)
    for got, want in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_dropout_is_kept_and_bf16_autocast_agrees() -> None:
    """Dropout still applies to the adapter's input (same seed, same mask); under bf16 autocast within bf16 noise."""
    model = _lora("tiny_llama", lora_dropout=0.3)
    ids = torch.randint(3, 200, (2, 12))
    torch.manual_seed(1)
    want, _ = _run(model, ids)
    fuse_lora_adds(model)
    torch.manual_seed(1)
    got, _ = _run(model, ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fused = model(input_ids=ids).logits.float()
        for module in model.modules():  # peft's own forward for comparison
            if hasattr(module, "_medtune_unfused_forward"):
                module.forward = module._medtune_unfused_forward
        plain = model(input_ids=ids).logits.float()
    assert (fused - plain).abs().max().item() < 0.05 * plain.abs().max().item()


def test_what_cannot_fuse_goes_through_peft(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adapters off (the base scores), merged, fp32 adapters on a bf16 base without autocast: peft's forward."""
    model = _lora("tiny_llama")
    fuse_lora_adds(model)
    ids = torch.randint(3, 200, (1, 8))
    calls = _spy(monkeypatch)
    with torch.no_grad():
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        assert torch.allclose(base, tiny_model("tiny_llama")(input_ids=ids).logits, atol=1e-6) and not calls
        adapted = model(input_ids=ids).logits
        assert calls and not torch.allclose(adapted, base)
        calls.clear()
        model.merge_adapter()
        torch.testing.assert_close(model(input_ids=ids).logits, adapted, rtol=1e-4, atol=1e-4)
        assert not calls
    mixed = _lora("tiny_llama").to(torch.bfloat16)
    for param in mixed.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    fuse_lora_adds(mixed)
    with torch.no_grad():
        mixed(input_ids=ids)
    assert not calls


def test_dora_is_left_to_peft(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _lora("tiny_llama", use_dora=True)
    fuse_lora_adds(model)
    calls = _spy(monkeypatch)
    with torch.no_grad():
        model(input_ids=torch.randint(3, 200, (1, 8)))
    assert not calls
