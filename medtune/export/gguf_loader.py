"""Load a GGUF back the way a runtime would run it: transformers' GGUF reader, plus the keys llama.cpp reads and it
does not.

transformers rebuilds a Gemma 3 or Llama config from a GGUF's keys, but it ignores a few that llama.cpp acts on
(rope scaling, Llama 3's `rope_freqs.weight`) and defaults one that llama.cpp derives (Gemma 3's attention scale is
1/sqrt(key_length)). Those are taken from the file here, never from the original model, so the check sees what the
file says. Everything else (weights, their names and layouts, the tokenizer) is transformers' own reading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

ROPE_FREQS = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"


class ExportLoadError(RuntimeError):
    """An export does not load back into a complete model."""


def _field(reader: gguf.GGUFReader, key: str) -> Any:
    field = reader.get_field(key)
    return None if field is None else field.contents()


def _runtime_config(config: Any, reader: gguf.GGUFReader) -> Any:
    """Set what llama.cpp takes from the file (or derives from it) and transformers' GGUF reader leaves at default."""
    arch = _field(reader, gguf.Keys.General.ARCHITECTURE)
    scaling = _field(reader, gguf.Keys.Rope.SCALING_TYPE.format(arch=arch))
    factor = _field(reader, gguf.Keys.Rope.SCALING_FACTOR.format(arch=arch))
    linear = {"rope_type": "linear", "factor": float(factor)} if scaling == "linear" else None
    if config.model_type == "gemma3_text":
        config.query_pre_attn_scalar = _field(reader, gguf.Keys.Attention.KEY_LENGTH.format(arch=arch))
        softcap = _field(reader, gguf.Keys.LLM.FINAL_LOGIT_SOFTCAPPING.format(arch=arch))
        config.final_logit_softcapping = float(softcap) if softcap else None
        if linear:
            config.rope_parameters["full_attention"].update(linear)
    elif linear:
        config.rope_parameters.update(linear)
    return config


def _apply_rope_freqs(model: torch.nn.Module, reader: gguf.GGUFReader) -> None:
    """llama.cpp divides each rotary frequency by `rope_freqs.weight`: do the same to the loaded model."""
    tensor = next((t for t in reader.tensors if t.name == ROPE_FREQS), None)
    if tensor is None:
        return
    rotary = model.model.rotary_emb
    head_dim = rotary.inv_freq.numel() * 2
    base = model.config.rope_parameters["rope_theta"]
    plain = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    divisors = torch.from_numpy(np.asarray(tensor.data, dtype=np.float64))
    rotary.inv_freq = (plain / divisors).to(torch.float32)
    rotary.original_inv_freq = rotary.inv_freq


def load_gguf(path: Path) -> tuple[torch.nn.Module, Any]:
    """(model in float32, tokenizer) read from a GGUF file by transformers, with llama.cpp's extra keys applied."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    reader = gguf.GGUFReader(path)
    config = _runtime_config(AutoConfig.from_pretrained(path.parent, gguf_file=path.name), reader)
    model, info = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, config=config, dtype=torch.float32, output_loading_info=True
    )
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = [k for k in info["missing_keys"] if k not in tied]
    if missing or info["mismatched_keys"]:
        mismatched = info["mismatched_keys"][:5]
        raise ExportLoadError(f"{path} loads incompletely: missing {missing[:5]}, mismatched {mismatched}")
    _apply_rope_freqs(model, reader)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model.eval(), tokenizer
