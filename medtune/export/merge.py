"""Rebuild the base a run trained on, attach its adapter and merge it: the float32 model every export is checked
against.

    merged = merge_adapter(source)      # merged.model (float32, plain transformers), merged.tokenizer

The base is rebuilt exactly as in training (same config, same seed for a random-init base, same quantisation) and
then made float32. A quantised (nf4/int8) base is dequantised in place before the adapter is attached, so the
merged weights are the quantised weights the adapter was trained and evaluated on, plus the LoRA update. (medtune's
`adapters.merge_and_save` instead reloads the unquantised checkpoint, which gives a model the adapter never saw.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from medtune.eval.adapter_check import (
    AdapterFileError,
    AdapterInactiveError,
    BaseMismatchError,
    check_adapter_active,
    load_adapter,
    probe_logits,
)
from medtune.export.source import SUPPORTED_MODEL_TYPES, ExportInputError, ExportSource
from medtune.models.build import ModelLoadError, build_model

log = logging.getLogger(__name__)


@dataclass
class Merged:
    """The merged model, its tokenizer, and how far merging moved the probe logits (should be ~1e-6)."""

    model: nn.Module
    tokenizer: Any
    adapter_logit_change: float  # max |logit change| the adapter causes on the probe prompt (0 = untrained)
    merge_logit_delta: float  # max |logit difference| between adapter-on-base and the merged weights
    seconds: dict[str, float] = field(default_factory=dict)  # how long merging (and scoring the probes) took


def _dequantized_linear(module: nn.Module) -> nn.Linear:
    """A float32 nn.Linear holding the weights a bitsandbytes nf4/int8 layer computes with."""
    import bitsandbytes as bnb

    weight = module.weight
    if isinstance(module, bnb.nn.Linear4bit):
        dense = bnb.functional.dequantize_4bit(weight.data, weight.quant_state)
    elif weight.dtype == torch.int8:  # Linear8bitLt: int8 rows with one absmax per row
        dense = weight.data.float() * weight.SCB.float().unsqueeze(1) / 127.0
    else:  # int8 weights that never left the CPU are still unquantised (bitsandbytes quantises on the move)
        dense = weight.data
    linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    linear.weight = nn.Parameter(dense.float().reshape(module.out_features, module.in_features), requires_grad=False)
    if module.bias is not None:
        linear.bias = nn.Parameter(module.bias.data.float(), requires_grad=False)
    return linear


@torch.no_grad()
def dequantize_(model: nn.Module) -> int:
    """Replace every bitsandbytes linear layer by its float32 dequantisation, in place; returns how many."""
    import bitsandbytes as bnb

    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, bnb.nn.Linear4bit | bnb.nn.Linear8bitLt):
                setattr(parent, name, _dequantized_linear(child))
                count += 1
    for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit", "quantization_method", "hf_quantizer"):
        if hasattr(model, flag):
            delattr(model, flag)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return count


def _build_base(source: ExportSource) -> tuple[nn.Module, Any]:
    torch.manual_seed(source.seed)  # a random-init base is then the one the run trained on (as medtune.evaluate)
    try:
        base, tokenizer = build_model(source.model_cfg, source.quant_cfg, torch.device("cpu"))
    except (ModelLoadError, FileNotFoundError, OSError) as err:
        raise ExportInputError(f"the base model cannot be loaded: {err}") from err
    if base.config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ExportInputError(
            f"the base is a {base.config.model_type!r} model; medtune exports Gemma 3 (text) and Llama models only."
        )
    if source.quant_cfg.method != "none":
        log.info("dequantised %d %s linear layers to float32", dequantize_(base), source.quant_cfg.method)
    return base.float(), tokenizer


def merge_adapter(source: ExportSource, base_mismatch_ok: bool = False) -> Merged:
    """The run's base with its adapter merged in, float32 on the CPU, ready for inference (use_cache on); an adapter
    that records another base is refused (ExportInputError) unless `base_mismatch_ok`."""
    base, tokenizer = _build_base(source)
    try:
        model = load_adapter(base, str(source.adapter_dir), base_mismatch_ok, "--base-mismatch-ok").float()
    except (AdapterFileError, BaseMismatchError) as err:
        raise ExportInputError(str(err)) from err
    before = probe_logits(model, tokenizer)  # one forward for both uses (a 70B float32 forward on a CPU is minutes)
    try:
        change = check_adapter_active(model, tokenizer, on=before)
    except AdapterInactiveError as err:
        raise ExportInputError(f"{source.adapter_dir}: {err}") from err
    merged = model.merge_and_unload()
    merged.config.use_cache = True
    merged.requires_grad_(False)
    delta = float((probe_logits(merged, tokenizer) - before).abs().max())
    log.info("adapter merged: it moves the probe logits by up to %.4f; merging changed them by %.2e", change, delta)
    return Merged(merged.eval(), tokenizer, change, delta)
