"""models/materialize.py: random weights seeded per module name (the same in any fill order, and as build_model
builds them), the run's random stream left alone, tied weights filled once, a local checkpoint read one tensor at a
time (a missing tensor named), and LoRA adapters seeded per layer."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from medtune.config import LoraConfig, ModelConfig, QuantizationConfig
from medtune.models.anatomy import decoder_layers
from medtune.models.build import arch_config, build_model
from medtune.models.lora import apply_lora
from medtune.models.materialize import Materializer, MissingWeightError, SafetensorsReader, split_modules

CPU = torch.device("cpu")
NONE = QuantizationConfig(method="none")


def _meta(arch: str) -> torch.nn.Module:
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(arch_config(arch), dtype=torch.float32)


def _fill(model: torch.nn.Module, fill: Materializer, reverse: bool) -> torch.nn.Module:
    """Every module filled: outside the layers first and the layers in order, or all of it backwards."""
    outside, layers_name = split_modules(model)
    named = list(outside)
    for index, layer in enumerate(decoder_layers(model)):
        named += list(layer.named_modules(prefix=f"{layers_name}.{index}"))
    for name, module in reversed(named) if reverse else named:
        fill.module_(name, module)
    return model


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma3"])
def test_random_weights_do_not_depend_on_the_fill_order_and_equal_build_model(arch: str) -> None:
    forward, backward, reseeded = _meta(arch), _meta(arch), _meta(arch)
    _fill(forward, Materializer(forward, CPU, seed=7), reverse=False)
    _fill(backward, Materializer(backward, CPU, seed=7), reverse=True)
    _fill(reseeded, Materializer(reseeded, CPU, seed=8), reverse=False)
    torch.manual_seed(7)
    mc = ModelConfig(name=arch, source="builtin", arch=arch, init="random", dtype="float32")
    built, _ = build_model(mc, NONE, CPU)
    ours, theirs, built_state = _state(forward), _state(backward), _state(built)
    assert ours.keys() == theirs.keys() == built_state.keys()
    for key in ours:
        assert not ours[key].is_meta
        assert torch.equal(ours[key], theirs[key]) and torch.equal(ours[key], built_state[key]), key
    assert not torch.equal(forward.model.layers[0].mlp.up_proj.weight, reseeded.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(forward.model.layers[0].mlp.up_proj.weight, forward.model.layers[1].mlp.up_proj.weight)
    if arch == "tiny_gemma3":  # the head is the embedding, filled once (its padding row stays zero)
        assert backward.lm_head.weight is backward.model.embed_tokens.weight
        assert built.lm_head.weight is built.model.embed_tokens.weight
        assert not built.model.embed_tokens.weight[built.config.pad_token_id].any()


def test_building_leaves_the_run_random_stream_alone() -> None:
    mc = ModelConfig(name="tiny_llama", source="builtin", arch="tiny_llama", init="random", dtype="float32")
    torch.manual_seed(3)
    before = torch.get_rng_state()
    model, _ = build_model(mc, NONE, CPU)
    apply_lora(model, LoraConfig(), NONE, grad_ckpt=0)
    assert torch.equal(torch.get_rng_state(), before)


def test_adapters_are_seeded_per_layer_name() -> None:
    mc = ModelConfig(name="tiny_llama", source="builtin", arch="tiny_llama", init="random", dtype="float32")
    adapters = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        model, _ = build_model(mc, NONE, CPU)
        peft = apply_lora(model, LoraConfig(), NONE, grad_ckpt=0)
        adapters.append({k: v.detach().clone() for k, v in peft.named_parameters() if v.requires_grad})
    q_a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert adapters[0][q_a].abs().sum() > 0
    assert all(torch.equal(v, adapters[1][k]) for k, v in adapters[0].items())
    assert not torch.equal(adapters[0][q_a], adapters[2][q_a])
    assert not torch.equal(adapters[0][q_a], adapters[0][q_a.replace("layers.0", "layers.1")])
    assert not any(v.any() for k, v in adapters[0].items() if "lora_B" in k)


def test_a_local_checkpoint_fills_the_meta_model_tensor_by_tensor(tmp_path) -> None:
    torch.manual_seed(0)
    saved = AutoModelForCausalLM.from_config(arch_config("tiny_llama"), dtype=torch.float32)
    saved.save_pretrained(tmp_path / "ckpt", max_shard_size="100KB")  # several files and an index
    assert (tmp_path / "ckpt" / "model.safetensors.index.json").is_file()
    model = _meta("tiny_llama")
    _fill(model, Materializer(model, CPU, seed=99, reader=SafetensorsReader(tmp_path / "ckpt")), reverse=True)
    theirs = _state(saved)
    for key, value in _state(model).items():
        assert torch.equal(value, theirs[key]), key
    partial = {k: v for k, v in saved.state_dict().items() if k != "model.layers.1.mlp.up_proj.weight"}
    from safetensors.torch import save_file

    (tmp_path / "partial").mkdir()
    save_file(partial, tmp_path / "partial" / "model.safetensors")
    model = _meta("tiny_llama")
    with pytest.raises(MissingWeightError, match=r"has no tensor model\.layers\.1\.mlp\.up_proj\.weight"):
        _fill(model, Materializer(model, CPU, reader=SafetensorsReader(tmp_path / "partial")), reverse=False)
    with pytest.raises(MissingWeightError, match=r"holds no model\.safetensors"):
        SafetensorsReader(tmp_path)
