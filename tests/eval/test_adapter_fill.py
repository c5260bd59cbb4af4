"""A saved adapter filled into the meta LoRA modules one decoder layer at a time equals peft's own loading of it, and
a damaged or mismatched adapter is refused before any layer is filled, as the whole path refuses it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from fixtures.export_run import make_run

from medtune.config import ModelConfig, QuantizationConfig
from medtune.eval.adapter_check import AdapterFileError, BaseMismatchError, check_base_architecture, load_adapter
from medtune.eval.adapter_fill import AdapterTensors, attach_meta_adapter, saved_key
from medtune.models.anatomy import causal_lm_of, decoder_layers
from medtune.models.build import build_model, build_skeleton
from medtune.models.materialize import Materializer, fill_layer_, split_modules


def _model_cfg(tmp_path: Path, arch: str = "tiny_llama") -> ModelConfig:
    spec = {"source": "builtin", "init": "random", "dtype": "float32", "attn_implementation": "eager"}
    return ModelConfig(name=arch, arch=str(tmp_path / f"{arch}.json"), **spec)


def _filled_per_layer(model_cfg: ModelConfig, adapter: Path) -> torch.nn.Module:
    """What runtime/shards.py shard_per_layer does, without the sharding (one process, no process group)."""
    torch.manual_seed(0)
    skeleton, _ = build_skeleton(model_cfg, QuantizationConfig())
    model = attach_meta_adapter(skeleton.eval(), str(adapter))
    tensors = AdapterTensors(str(adapter), model)
    lm = causal_lm_of(model)
    fill = Materializer(lm, torch.device("cpu"), torch.initial_seed())
    outside, layers_name = split_modules(lm)
    for index, layer in enumerate(decoder_layers(lm)):
        fill_layer_(fill, layer, f"{layers_name}.{index}", QuantizationConfig(), torch.float32)
        tensors.fill_layer_(layer, f"{layers_name}.{index}")
    for name, module in outside:
        fill.module_(name, module)
    assert tensors.filled == sum("lora_" in n for n, _ in model.named_parameters()) > 0
    return model


def test_per_layer_fill_equals_peft_loading(tmp_path: Path) -> None:
    adapter = make_run(tmp_path, "tiny_llama") / "adapter"
    ours = dict(_filled_per_layer(_model_cfg(tmp_path), adapter).named_parameters())
    torch.manual_seed(0)
    base, _ = build_model(_model_cfg(tmp_path), QuantizationConfig(), torch.device("cpu"))
    theirs = dict(load_adapter(base, str(adapter)).named_parameters())
    assert ours.keys() == theirs.keys()
    for name, param in theirs.items():
        assert ours[name].dtype == param.dtype and not ours[name].requires_grad, name
        torch.testing.assert_close(ours[name], param, rtol=0, atol=0, msg=name)


def test_saved_keys_are_peft_s_including_dora() -> None:
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    model = get_peft_model(tiny_model("tiny_llama"), LoraConfig(r=2, target_modules="all-linear", use_dora=True))
    ours = {saved_key(n) for n, _ in model.named_parameters() if "lora_" in n}
    assert ours == set(get_peft_model_state_dict(model)) and any(k.endswith("lora_magnitude_vector") for k in ours)


def test_damaged_or_mismatched_adapters_are_refused_before_the_fill(tmp_path: Path) -> None:
    adapter = make_run(tmp_path, "tiny_llama") / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps(config | {"r": 8}))  # saved for another lora.r

    def tensors() -> AdapterTensors:
        skeleton, _ = build_skeleton(_model_cfg(tmp_path), QuantizationConfig())
        return AdapterTensors(str(adapter), attach_meta_adapter(skeleton, str(adapter)))

    with pytest.raises(AdapterFileError, match=r"lora_A.weight has shape \[4, \d+\], the model.s is \[8, \d+\]"):
        tensors()
    (adapter / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterFileError, match=r"damaged or was saved for another lora\.r"):
        tensors()
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    (adapter / "adapter_model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(AdapterFileError, match=r"adapter_model\.safetensors or adapter_config\.json is damaged"):
        tensors()


def test_another_architecture_is_refused_before_the_fill(tmp_path: Path) -> None:
    adapter = make_run(tmp_path, "tiny_llama") / "adapter"
    make_run(tmp_path, "tiny_gemma3")
    skeleton, _ = build_skeleton(_model_cfg(tmp_path, "tiny_gemma3"), QuantizationConfig())
    with pytest.raises(BaseMismatchError, match=r"model_type llama vs gemma3_text.*eval\.base_mismatch_ok=true"):
        check_base_architecture(skeleton.config, adapter, mismatch_ok=False)
    check_base_architecture(skeleton.config, adapter, mismatch_ok=True)  # check_base warns after the fill
    check_base_architecture(build_skeleton(_model_cfg(tmp_path), QuantizationConfig())[0].config, adapter, False)
