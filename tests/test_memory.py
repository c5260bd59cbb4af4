"""The memory estimator's weight, adapter and optimizer arithmetic against real tiny models built on the CPU."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model

from medtune.adapters import apply_lora
from medtune.memory import (
    Calibration,
    compose,
    estimate,
    layer_activation_bytes,
    load_arch,
    lora_param_count,
    main,
    quantized_bytes,
    weight_bytes,
)


def _storage_bytes(model: torch.nn.Module) -> int:
    """Bytes of every distinct parameter/buffer storage, bitsandbytes quantisation state included."""
    seen: dict[int, int] = {}

    def add(t: torch.Tensor | None) -> None:
        if t is not None:
            seen[t.data_ptr()] = t.numel() * t.element_size()

    for tensor in [*model.parameters(), *model.buffers()]:
        add(tensor)
        state = getattr(tensor, "quant_state", None)
        if state is not None:
            for part in (state.absmax, state.code, state.offset):
                add(part)
            if state.state2 is not None:
                add(state.state2.absmax)
                add(state.state2.code)
        add(getattr(tensor, "SCB", None))
    return sum(seen.values())


@pytest.mark.parametrize("arch", ["tiny_gemma3", "tiny_llama"])
def test_fp32_weights_equal_the_conftest_model(arch: str) -> None:
    cfg = compose([f"model={arch}", "quantization=none"])
    assert sum(weight_bytes(load_arch(cfg), cfg).values()) == _storage_bytes(tiny_model(arch))


@pytest.mark.parametrize("method", ["none", "nf4", "int8"])
@pytest.mark.parametrize("arch", ["tiny_gemma3", "tiny_llama"])
def test_stored_weights_equal_built_model(arch: str, method: str) -> None:
    from medtune.models import build_model

    cfg = compose([f"model={arch}", f"quantization={method}", "model.dtype=bfloat16"])
    model, _ = build_model(cfg.model, cfg.quantization, torch.device("cpu"))
    assert sum(weight_bytes(load_arch(cfg), cfg).values()) == _storage_bytes(model)


def test_nf4_bytes_by_hand() -> None:
    # 2560 x 10240 weights: 13,107,200 B of codes, 409,600 blocks -> 409,600 B uint8 absmax + 1600 fp32 second-level
    # absmax (6400 B) + 1028 B map/offset + 64 B NF4 code; without double quant 4 B per block.
    n = 2560 * 10240
    assert quantized_bytes(n, "nf4", True) == 13_107_200 + 409_600 + 6_400 + 1_028 + 64
    assert quantized_bytes(n, "nf4", False) == 13_107_200 + 4 * 409_600 + 64


@pytest.mark.parametrize(
    "overrides", [[], ["lora.r=4", "lora.target_modules=[q_proj,down_proj]"], ["lora.use_dora=true"]]
)
def test_adapter_grads_and_adam_state_equal_measured(overrides: list[str]) -> None:
    cfg = compose(["model=tiny_gemma3", "quantization=none", *overrides])
    model = apply_lora(tiny_model("tiny_gemma3"), cfg.lora, cfg.quantization, grad_ckpt_every=0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in trainable)
    est = estimate(cfg)
    assert est.parts["lora/params"] == sum(p.numel() * 4 for p in trainable)
    model.train()
    model(input_ids=torch.randint(3, 500, (2, 12))).logits.float().square().mean().backward()
    assert est.parts["lora/grads"] == sum(p.grad.numel() * p.grad.element_size() for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    optimizer.step()
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for k, t in s.items() if k != "step")
    assert est.parts["optimizer/states"] == state


def test_lora_count_for_gemma3_4b() -> None:
    # per layer r * (in + out): q 16*(2560+2048), k and v 16*(2560+1024), o 16*(2048+2560), gate/up/down 16*12800
    cfg = compose(["model=medgemma_4b", "model.init=random"])
    per_layer = 16 * (4608 + 3584 + 3584 + 4608 + 3 * 12800)
    assert lora_param_count(load_arch(cfg), cfg) == 34 * per_layer


def test_fsdp_divides_weights_and_optimizer_but_not_activations() -> None:
    one = estimate(compose(["model=medgemma_4b", "model.init=random", "quantization=nf4"]))
    four = estimate(compose(["model=medgemma_4b", "model.init=random", "quantization=nf4", "sharding=fsdp"]), 4)
    for key in ("weights/layers", "weights/embed_head", "lora/params", "optimizer/states"):
        assert four.parts[key] == pytest.approx(one.parts[key] / 4)
    assert four.parts["activations/stored"] == one.parts["activations/stored"]
    assert four.parts["fsdp/gathered"] > 0
    assert four.peak_bytes < one.peak_bytes


def test_checkpointing_and_attention_terms() -> None:
    base = ["model=medgemma_4b", "model.init=random", "packing=pad_to_max", "trainer.micro_batch_size=1"]
    every = estimate(compose([*base, "trainer.grad_ckpt_every=1"])).parts
    half = estimate(compose([*base, "trainer.grad_ckpt_every=2"])).parts
    off = estimate(compose([*base, "trainer.grad_ckpt_every=0"])).parts
    assert every["activations/stored"] < half["activations/stored"] < off["activations/stored"]
    assert off["activations/recompute"] == 0
    # 34 layers, every layer checkpointed: only the bf16 inputs stay, 2 B x 2560 x 2048 tokens each
    assert every["activations/stored"] == 34 * 2 * 2560 * 2048
    cfg_sdpa = compose(base)
    cfg_eager = compose([*base, "model.attn_implementation=eager"])
    arch, cal = load_arch(cfg_sdpa), Calibration()
    extra = layer_activation_bytes(arch, cfg_eager, 2048, cal) - layer_activation_bytes(arch, cfg_sdpa, 2048, cal)
    assert extra == cal.eager_score_bytes * 8 * 2048 * 2048  # heads x seq^2 probabilities per layer


def test_loss_chunk_scales_with_chunk_size() -> None:
    small = estimate(compose(["model=medgemma_4b", "model.init=random", "trainer.loss_chunk_size=256"]))
    big = estimate(compose(["model=medgemma_4b", "model.init=random", "trainer.loss_chunk_size=1024"]))
    delta = big.parts["loss/chunk"] - small.parts["loss/chunk"]
    assert delta == Calibration().logits_fp32_copies * (1024 - 256) * 262208 * 4


def test_cli_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    main(["model=tiny_llama", "quantization=nf4", "sharding=fsdp", "world_size=2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["world_size"] == 2 and out["peak_gib"] > 0 and "weights/layers" in out["parts"]


def test_unknown_target_module_is_named() -> None:
    with pytest.raises(ValueError, match="qkv_proj"):
        estimate(compose(["model=tiny_llama", "lora.target_modules=[qkv_proj]"]))
