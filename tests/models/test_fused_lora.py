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
    """One entry per fused forward: the one-node LoRALinear, or the addmm after peft's base layer."""
    import medtune.models.fused_lora as fused_lora

    calls = []
    real, real_node = torch.addmm, fused_lora.LoRALinear.apply
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(fused_lora.LoRALinear, "apply", lambda *a, **k: calls.append(1) or real_node(*a, **k))
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


def _qlora(arch: str, dtype: torch.dtype, dropout: float) -> torch.nn.Module:
    """nf4 base (compute dtype `dtype`) with `dtype` adapters, as medtune builds QLoRA."""
    from peft import LoraConfig, get_peft_model

    from medtune.config import QuantizationConfig
    from medtune.models.quantize import quantize_linears_

    model = tiny_model(arch).to(dtype)
    quantize_linears_(model.model, QuantizationConfig(method="nf4", compute_dtype=str(dtype).split(".")[1]), "cpu")
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, lora_dropout=dropout)
    model = get_peft_model(model, config, autocast_adapter_dtype=False)
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.to(dtype)
    return model.train()


def _embedding_grad_too(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and the adapters' gradients, plus the gradient reaching the embeddings (every input gradient)."""
    model.zero_grad()
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds).logits
    logits.float().square().mean().backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad] + [embeds.grad]


@pytest.mark.parametrize(("arch", "dtype", "dropout"), [
    ("tiny_llama", torch.float32, 0.0), ("tiny_gemma3", torch.float32, 0.0), ("tiny_llama", torch.float32, 0.3),
])  # fmt: skip
def test_one_node_qlora_equals_peft_and_bitsandbytes(
    arch: str, dtype: torch.dtype, dropout: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an nf4 base the fused layer owns the 4-bit matmul (one autograd node): peft's + bitsandbytes' outputs,
    adapter gradients and input gradients, with dropout's mask (same seed)."""
    import medtune.models.fused_lora as fused_lora

    model = _qlora(arch, dtype, dropout)
    ids = torch.randint(3, 200, (2, 12))
    torch.manual_seed(1)
    want_logits, want_grads = _embedding_grad_too(model, ids)
    fuse_lora_adds(model)
    owned = []
    real = fused_lora._dense_weight
    monkeypatch.setattr(fused_lora, "_dense_weight", lambda *a: owned.append(1) or real(*a))
    torch.manual_seed(1)
    got_logits, got_grads = _embedding_grad_too(model, ids)
    assert len(owned) == 2 * 7 * model.config.num_hidden_layers  # every projection: forward and backward
    for got, want in zip([got_logits, *got_grads], [want_logits, *want_grads], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                           reason="needs CUDA")]),
])  # fmt: skip
def test_one_node_qlora_in_bf16_is_as_close_to_exact_as_peft(device: str) -> None:
    """bf16 (a random 4-layer model amplifies bf16 noise past any useful tolerance, so one layer of Gemma 3 4B's MLP
    width): the output and the input, A and B gradients against a float64 computation with the same dequantised
    weight, no further off than peft's + bitsandbytes' bf16 path (on CUDA: bitsandbytes' CUDA kernels)."""
    import bitsandbytes.functional as bnb_functional
    from peft import LoraConfig, get_peft_model

    from medtune.config import QuantizationConfig
    from medtune.models.quantize import quantize_linears_

    torch.manual_seed(0)
    d_in, d_out, tokens = (256, 384, 64) if device == "cpu" else (2560, 10240, 4096)
    model = torch.nn.Sequential(torch.nn.Linear(d_in, d_out, bias=False)).to(torch.bfloat16)
    quantize_linears_(model, QuantizationConfig(method="nf4", compute_dtype="bfloat16"), torch.device(device))
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["0"], init_lora_weights=False)
    model = get_peft_model(model, config, autocast_adapter_dtype=False).to(device=device, dtype=torch.bfloat16)
    layer = model.base_model.model[0]
    x = torch.randn(tokens, d_in, dtype=torch.bfloat16, device=device)
    weight = bnb_functional.dequantize_4bit(layer.base_layer.weight, layer.base_layer.weight.quant_state).double()
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    grad_out = torch.randn(tokens, d_out, dtype=torch.float64, device=device)

    nodes = []

    def run(forward) -> list[torch.Tensor]:
        inp = x.detach().requires_grad_(True)
        a.grad = b.grad = None
        out = forward(inp)
        nodes.append(type(out.grad_fn).__name__)
        out.backward(grad_out.to(out.dtype))
        return [out.detach().double(), inp.grad.double(), a.grad.double(), b.grad.double()]

    exact = run(lambda inp: inp.double() @ weight.t() + 2.0 * (inp.double() @ a.double().t()) @ b.double().t())
    nodes.clear()
    peft_path = run(layer.forward)
    fuse_lora_adds(model)
    ours = run(layer.forward)
    assert nodes == ["AddBackward0", "LoRALinearBackward"]  # peft adds the adapter last; then the one node
    for got, theirs, want in zip(ours, peft_path, exact, strict=True):
        ours_err, theirs_err = (got - want).abs().max().item(), (theirs - want).abs().max().item()
        assert ours_err <= 1.5 * theirs_err + 1e-3 * want.abs().max().item(), (ours_err, theirs_err)


def test_one_node_path_skips_what_it_cannot_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """A base weight that trains: the addmm path; an input in another dtype than the adapters (fp32 activations,
    bf16 adapters, no autocast): not the one-node path either."""
    import medtune.models.fused_lora as fused_lora

    owned = []
    real = fused_lora._dense_weight
    monkeypatch.setattr(fused_lora, "_dense_weight", lambda *a: owned.append(1) or real(*a))
    model = _lora("tiny_llama")
    fuse_lora_adds(model)
    next(m for m in model.modules() if type(m).__name__ == "Linear" and hasattr(m, "base_layer")).base_layer.weight \
        .requires_grad_(True)  # fmt: skip
    mixed = _qlora("tiny_llama", torch.float32, 0.0)
    for param in mixed.parameters():
        if param.requires_grad:
            param.data = param.data.to(torch.bfloat16)
    fuse_lora_adds(mixed)
    calls = _spy(monkeypatch)
    ids = torch.randint(3, 200, (1, 8))
    model(input_ids=ids)
    assert len(owned) == 7 * model.config.num_hidden_layers - 1 and calls  # all but the one with a trained base
    owned.clear()
    with torch.no_grad():
        mixed(input_ids=ids)
    assert not owned
