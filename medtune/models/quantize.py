"""bitsandbytes quantisation of the frozen base: the loading config, and in-place quantisation of built layers.

`bnb_config` is what `from_pretrained` gets for a checkpoint. `quantize_linears_` is for models built with random
weights (models/build.py): transformers can only quantise while loading a checkpoint, so each freshly initialised
decoder layer has its nn.Linear modules swapped for bitsandbytes ones here, exactly the layers transformers would
convert (everything but the output projection).
"""

from __future__ import annotations

import torch
from torch import nn

from medtune.config import QuantizationConfig
from medtune.models.precision import TORCH_DTYPES


def bnb_config(quant_cfg: QuantizationConfig):
    """transformers BitsAndBytesConfig for nf4 (double quant, compute dtype, quant storage) or int8; None for none."""
    from transformers import BitsAndBytesConfig

    if quant_cfg.method == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=quant_cfg.double_quant,
            bnb_4bit_compute_dtype=TORCH_DTYPES[quant_cfg.compute_dtype],
            bnb_4bit_quant_storage=TORCH_DTYPES[quant_cfg.quant_storage],
        )
    if quant_cfg.method == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def quantized_linear_classes() -> tuple[type, ...]:
    """The bitsandbytes layers `quantized_linear` returns (nf4, int8)."""
    import bitsandbytes as bnb

    return (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)


def _empty_quantized(linear: nn.Module, quant_cfg: QuantizationConfig) -> nn.Module:
    """The bitsandbytes layer for `linear`'s shape, built on the meta device (no weight allocated)."""
    import bitsandbytes as bnb

    has_bias = linear.bias is not None
    with torch.device("meta"):
        if quant_cfg.method == "nf4":
            return bnb.nn.Linear4bit(
                linear.in_features,
                linear.out_features,
                bias=has_bias,
                compute_dtype=TORCH_DTYPES[quant_cfg.compute_dtype],
                compress_statistics=quant_cfg.double_quant,
                quant_type="nf4",
                quant_storage=TORCH_DTYPES[quant_cfg.quant_storage],
            )
        return bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False)


def quantized_linear(linear: nn.Linear, quant_cfg: QuantizationConfig, device: torch.device) -> nn.Module:
    """`linear`'s nf4/int8 bitsandbytes counterpart on `device`, its weight quantised."""
    import bitsandbytes as bnb

    has_bias = linear.bias is not None
    new = _empty_quantized(linear, quant_cfg)  # its own (empty) weight is replaced below; never allocated
    weight = linear.weight.data
    if quant_cfg.method == "nf4":
        param = bnb.nn.Params4bit(
            weight,
            requires_grad=False,
            compress_statistics=quant_cfg.double_quant,
            quant_type="nf4",
            quant_storage=TORCH_DTYPES[quant_cfg.quant_storage],
            module=new,
        )
        new.weight = param.to(device)  # .to() on an unquantised Params4bit quantises it
    else:
        # Int8Params quantises only on a move away from the CPU, so start from there.
        new.weight = bnb.nn.Int8Params(weight.cpu(), requires_grad=False, has_fp16_weights=False).to(device)
    if has_bias:
        new.bias = nn.Parameter(linear.bias.data, requires_grad=False)
    return new


@torch.no_grad()
def quantize_linears_(module: nn.Module, quant_cfg: QuantizationConfig, device: torch.device) -> None:
    """Replace every plain nn.Linear inside `module` by its nf4/int8 bitsandbytes counterpart, in place."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, quantized_linear(child, quant_cfg, device))


def quantize_skeleton_(module: nn.Module, quant_cfg: QuantizationConfig) -> None:
    """Replace every plain nn.Linear inside a meta `module` by its empty bitsandbytes counterpart (still meta), so
    peft attaches its quantised-layer adapters; models/materialize.py fills each one when its layer is loaded."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, _empty_quantized(child, quant_cfg))
