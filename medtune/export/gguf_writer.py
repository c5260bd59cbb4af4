"""Write a merged Llama or Gemma 3 (text) model as one GGUF file (f16 or q8_0) with its tokenizer.

    write_gguf(model, tokenizer, tokenizer_dir, Path("model-f16.gguf"), "f16", {"name": "gemma3 270m medtune"})

Tensor names come from the `gguf` package's mapping (`get_tensor_name_map`); what differs between the transformers
model and what llama.cpp computes is changed here, each for a reason:

- Gemma's RMSNorm multiplies by (1 + w), llama.cpp's by w: Gemma norm weights are written as w + 1.
- llama.cpp rotates Llama's query/key dimensions in adjacent pairs, transformers in halves: q/k rows are reordered.
- Llama 3 rope scaling is a per-frequency divisor in llama.cpp (`rope_freqs.weight`), not a config key.

A model that llama.cpp would run differently (a Gemma 3 whose layer pattern or local rope is not the one llama.cpp
hard-codes, other rope types, biases) is refused before anything is written; `check_gguf_supported` says why.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from medtune.export.gguf_tokenizer import add_tokenizer
from medtune.models.anatomy import head_dim_of

log = logging.getLogger(__name__)

ARCHS = {"llama": gguf.MODEL_ARCH.LLAMA, "gemma3_text": gguf.MODEL_ARCH.GEMMA3}
QUANTS = {
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
F16_MAX = 65504.0
GEMMA3_SWA_EVERY = 6  # llama.cpp hard-codes Gemma 3's pattern: every 6th layer global, the rest sliding
GEMMA3_LOCAL_THETA = 10000.0  # ... and the sliding layers' rope base


class GGUFExportError(ValueError):
    """The model cannot be written as a GGUF that llama.cpp would run as transformers does."""


def _rope(params: dict | None) -> tuple[str, dict]:
    params = dict(params or {})
    return params.get("rope_type", "default"), params


def _gemma3_problems(config: Any) -> list[str]:
    problems = []
    expected = [
        "full_attention" if (i + 1) % GEMMA3_SWA_EVERY == 0 else "sliding_attention"
        for i in range(config.num_hidden_layers)
    ]
    if list(config.layer_types) != expected:
        problems.append(f"layer_types {config.layer_types} are not llama.cpp's fixed pattern (every 6th global)")
    local_type, local = _rope(config.rope_parameters.get("sliding_attention"))
    if local_type != "default" or local.get("rope_theta") != GEMMA3_LOCAL_THETA:
        problems.append(f"sliding-layer rope {local} is not llama.cpp's fixed default rope with base 10000")
    if _rope(config.rope_parameters.get("full_attention"))[0] not in ("default", "linear"):
        problems.append("global-layer rope type is neither default nor linear")
    if config.query_pre_attn_scalar != config.head_dim:
        problems.append(f"query_pre_attn_scalar {config.query_pre_attn_scalar} != head_dim {config.head_dim}")
    if config.attn_logit_softcapping or config.use_bidirectional_attention:
        problems.append("attention soft-capping or bidirectional attention is set")
    if config.hidden_activation != "gelu_pytorch_tanh":
        problems.append(f"hidden_activation {config.hidden_activation}")
    return problems


def _llama_problems(config: Any) -> list[str]:
    problems = []
    if _rope(config.rope_parameters)[0] not in ("default", "linear", "llama3"):
        problems.append(f"rope type {_rope(config.rope_parameters)[0]} (supported: default, linear, llama3)")
    if config.attention_bias or config.mlp_bias:
        problems.append("attention or MLP biases")
    if config.hidden_act != "silu":
        problems.append(f"hidden_act {config.hidden_act}")
    return problems


def check_gguf_supported(config: Any) -> None:
    """Raise GGUFExportError unless llama.cpp would run this architecture exactly as transformers does."""
    if config.model_type not in ARCHS:
        raise GGUFExportError(f"model_type {config.model_type!r} has no GGUF export; supported: {sorted(ARCHS)}.")
    problems = (_gemma3_problems if config.model_type == "gemma3_text" else _llama_problems)(config)
    if problems:
        raise GGUFExportError(
            f"this {config.model_type} cannot be exported to GGUF: llama.cpp would run it differently ("
            + "; ".join(problems)
            + "). Export it with --format safetensors instead."
        )


def permute_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's rows from transformers' halves (i, i + d/2) to llama.cpp's adjacent pairs (2i, 2i+1)."""
    rows, cols = weight.shape
    return weight.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def to_gguf_layout(name: str, weight: torch.Tensor, config: Any) -> torch.Tensor:
    """The tensor as llama.cpp computes with it (see the module docstring for each change)."""
    weight = weight.detach().to("cpu", torch.float32)
    if config.model_type == "gemma3_text" and name.endswith("norm.weight"):
        return weight + 1.0
    if config.model_type == "llama" and name.endswith("self_attn.q_proj.weight"):
        return permute_rope_rows(weight, config.num_attention_heads)
    if config.model_type == "llama" and name.endswith("self_attn.k_proj.weight"):
        return permute_rope_rows(weight, config.num_key_value_heads)
    return weight


def _matrix_type(shape: tuple[int, ...], quant: str) -> gguf.GGMLQuantizationType:
    """The requested type, or f16 for a matrix whose rows do not split into whole quantisation blocks."""
    qtype = QUANTS[quant][0]
    return qtype if shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0] == 0 else gguf.GGMLQuantizationType.F16


def _encode(name: str, weight: torch.Tensor, quant: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """Weights as stored: 1-D tensors (norms) stay f32, as llama.cpp keeps them; matrices become f16 or q8_0."""
    array = weight.numpy()
    if array.ndim == 1:
        return array.astype(np.float32), gguf.GGMLQuantizationType.F32
    qtype = _matrix_type(array.shape, quant)
    if qtype == gguf.GGMLQuantizationType.F16:
        peak = float(np.abs(array).max())
        if peak > F16_MAX:
            raise GGUFExportError(f"{name} has |w| up to {peak:.3g}, beyond float16's range; use --quant q8_0.")
        return array.astype(np.float16), qtype
    return gguf.quants.quantize(array.astype(np.float32), qtype), qtype


def gguf_tensors(model: torch.nn.Module) -> list[tuple[str, str, torch.Tensor]]:
    """(transformers name, GGUF name, tensor in llama.cpp's layout) for every weight, plus Llama 3's rope_freqs."""
    config = model.config
    names = gguf.get_tensor_name_map(ARCHS[config.model_type], config.num_hidden_layers)
    out, unmapped = [], []
    for name, param in model.named_parameters():  # tied lm_head is not listed again: llama.cpp reuses token_embd
        stem, suffix = name.rsplit(".", 1)
        target = names.get_name(stem)
        if target is None:
            unmapped.append(name)
            continue
        out.append((name, f"{target}.{suffix}", to_gguf_layout(name, param, config)))
    if unmapped:
        raise GGUFExportError(f"no GGUF name for {unmapped[:5]} (gguf {gguf.__version__} tensor map)")
    if config.model_type == "llama" and _rope(config.rope_parameters)[0] == "llama3":
        out.append(("rope_freqs", gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", _rope_freqs(model)))
    return out


def _rope_freqs(model: torch.nn.Module) -> torch.Tensor:
    """llama.cpp's per-frequency divisors: the unscaled inverse frequencies over the model's scaled ones."""
    config = model.config
    head_dim = head_dim_of(config)
    base = config.rope_parameters["rope_theta"]
    plain = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    return (plain / model.model.rotary_emb.inv_freq.to(torch.float64)).to(torch.float32)


def _add_hparams(writer: gguf.GGUFWriter, config: Any) -> None:
    head_dim = head_dim_of(config)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)
    if config.model_type == "gemma3_text":
        writer.add_sliding_window(config.sliding_window)
        rope_type, rope = _rope(config.rope_parameters["full_attention"])
        if config.final_logit_softcapping:
            writer.add_final_logit_softcapping(config.final_logit_softcapping)
    else:
        writer.add_rope_dimension_count(head_dim)
        rope_type, rope = _rope(config.rope_parameters)
    writer.add_rope_freq_base(rope["rope_theta"])
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])


def estimate_gguf_bytes(shapes: list[tuple[int, ...]], quant: str) -> int:
    """Bytes of the tensor data for these weight shapes (the tokenizer adds a few MB, counted by the caller)."""
    total = 0
    for shape in shapes:
        n = int(np.prod(shape))
        block, size = (1, 4) if len(shape) == 1 else gguf.GGML_QUANT_SIZES[_matrix_type(shape, quant)]
        total += n // block * size
    return total


def write_gguf(
    model: torch.nn.Module, tokenizer: Any, tokenizer_dir: Path, path: Path, quant: str, meta: dict[str, str]
) -> dict[str, Any]:
    """Write `model` (merged, float) and its tokenizer to `path`; returns what was written (tensors, types, bytes)."""
    config = model.config
    check_gguf_supported(config)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[ARCHS[config.model_type]])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(meta["name"])
    if meta.get("license"):
        writer.add_license(meta["license"])
    writer.add_file_type(QUANTS[quant][1])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_hparams(writer, config)
    fields = add_tokenizer(writer, tokenizer, tokenizer_dir, config.vocab_size)
    types: dict[str, int] = {}
    for hf_name, name, tensor in gguf_tensors(model):
        array, qtype = _encode(hf_name, tensor, quant)
        writer.add_tensor(name, array, raw_dtype=qtype)
        types[qtype.name] = types.get(qtype.name, 0) + 1
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=True)
    finally:  # also on a failed write: an open handle keeps a removed partial file's blocks on a full disk
        for handle in writer.fout or []:
            with contextlib.suppress(OSError):  # closing flushes, which fails again on a full disk
                handle.close()
        writer.fout = None
    log.info("wrote %s (%s, %s tensors)", path, quant, types)
    return {"tensor_types": types, "bytes": path.stat().st_size, "tokenizer_model": fields.model}
