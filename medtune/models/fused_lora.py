"""The adapter's output added to the base layer's inside one matmul: `addmm(base, A(dropout(x)), B^T, alpha=scaling)`.

peft's LoRA forward computes `result = base(x).clone()` (4-bit layers clone defensively), then `B(A(x))`, multiplies
it by the scaling and adds it: three full passes over a [tokens x out_features] tensor besides the matmuls. In the
profile of the Gemma 3 4B architecture in nf4 at 8 x 2048 tokens (H200, experiments/results/efficiency_h200/profile)
copies were 11% of the GPU time (peft's clones most of them by count), additions 7.5% and multiplications 5.3%;
fusing took the step from 17,777 to 19,083 useful tokens/s. Here B's matmul adds into the base output in its
epilogue (beta=1, alpha=scaling), which is the same sum with one rounding fewer.

    fused = fuse_lora_adds(model)   # in place on every LoRA Linear / Linear4bit; returns how many were fused

Only the plain case is fused: adapters enabled and unmerged, one active adapter, no DoRA or other variant, no
mixed-adapter batch; everything else (and every call that does not fit) goes through peft's own forward.
"""

from __future__ import annotations

import logging
import types
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)
_UNFUSED = "_medtune_unfused_forward"  # where a fused layer keeps peft's forward


def _fusable(layer: Any, kwargs: dict) -> str | None:
    """The one active adapter this call can fuse, or None (peft's forward handles it)."""
    if layer.disable_adapters or layer.merged or kwargs:
        return None
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    if len(active) != 1 or active[0] in getattr(layer, "lora_variant", {}):
        return None
    name = active[0]
    if layer.lora_B[name].bias is not None or getattr(layer, "use_dora", {}).get(name, False):
        return None
    return name


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    name = _fusable(self, kwargs)
    # autocast runs both matmuls in its dtype; without it only one dtype throughout is fused (fp32 adapters on a
    # bf16 base compute in fp32 in peft's forward, and keep doing so)
    if name is None or not (torch.is_autocast_enabled(x.device.type) or x.dtype == self.lora_A[name].weight.dtype):
        return getattr(self, _UNFUSED)(x, *args, **kwargs)
    result = self.base_layer(x, *args)
    low = self.lora_A[name](self.lora_dropout[name](x))
    flat = result.reshape(-1, result.shape[-1])
    out = torch.addmm(flat, low.reshape(-1, low.shape[-1]), self.lora_B[name].weight.t(), alpha=self.scaling[name])
    return out.view(result.shape)


def fuse_lora_adds(model: nn.Module) -> int:
    """Give every peft LoRA Linear / Linear4bit the fused forward (in place); returns how many layers."""
    from peft.tuners.lora.layer import Linear

    classes: tuple[type, ...] = (Linear,)
    try:
        from peft.tuners.lora.bnb import Linear4bit

        classes += (Linear4bit,)
    except ImportError:  # no bitsandbytes here
        pass
    fused = 0
    for module in model.modules():
        if isinstance(module, classes) and not hasattr(module, _UNFUSED):
            setattr(module, _UNFUSED, module.forward)
            module.forward = types.MethodType(_fused_forward, module)
            fused += 1
    log.info("LoRA: the adapter's output added inside B's matmul on %d layers (lora.fused)", fused)
    return fused
