"""The adapter's output added to the base layer's inside one matmul: `addmm(base, A(dropout(x)), B^T, alpha=scaling)`.

peft's LoRA forward computes `result = base(x).clone()` (4-bit layers clone defensively), then `B(A(x))`, multiplies
it by the scaling and adds it: three full passes over a [tokens x out_features] tensor besides the matmuls. In the
profile of the Gemma 3 4B architecture in nf4 at 8 x 2048 tokens (H200, experiments/results/efficiency_h200/profile)
copies were 11% of the GPU time (peft's clones most of them by count), additions 7.5% and multiplications 5.3%;
fusing took the step from 17,777 to 19,083 useful tokens/s. Here B's matmul adds into the base output in its
epilogue (beta=1, alpha=scaling), which is the same sum with one rounding fewer.

    fused = fuse_lora_adds(model)   # in place on every LoRA Linear / Linear4bit; returns how many were fused

Where the base is a frozen nn.Linear or a bitsandbytes 4-bit Linear (QLoRA), the whole layer is one autograd
function (`LoRALinear`): the base weight is dequantised and multiplied in it, and its backward computes the input's
and the adapters' gradients itself, dequantising again. The result is the same; what goes is the Python around it
(bitsandbytes' matmul dispatch, three autograd nodes per adapted projection), which at 4 rows of 2048 tokens on the
Gemma 3 4B architecture kept the GPU waiting for the CPU.

Only the plain case is fused: adapters enabled and unmerged, one active adapter, no DoRA or other variant, no
mixed-adapter batch; everything else (and every call that does not fit) goes through peft's own forward.
"""

from __future__ import annotations

import logging
import types
from typing import Any

import torch
from torch import nn

from medtune.models.dequant import dequantize

log = logging.getLogger(__name__)
_UNFUSED = "_medtune_unfused_forward"  # where a fused layer keeps peft's forward
_OWN_BASE = "_medtune_fused_base"  # whether it may do the base layer's matmul itself (LoRALinear)


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
    base, dropout = self.base_layer, self.lora_dropout[name]
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    if not args and getattr(self, _OWN_BASE, False) and _owned_base(base, x, a.dtype):
        xd = None if isinstance(dropout, nn.Identity) or not (dropout.training and dropout.p) else dropout(x)
        return LoRALinear.apply(x, xd, base, a, b, self.scaling[name])
    result = base(x, *args)
    low = self.lora_A[name](dropout(x))
    flat = result.reshape(-1, result.shape[-1])
    out = torch.addmm(flat, low.reshape(-1, low.shape[-1]), self.lora_B[name].weight.t(), alpha=self.scaling[name])
    return out.view(result.shape)


def _owned_base(base: nn.Module, x: torch.Tensor, adapter_dtype: torch.dtype) -> bool:
    """Whether LoRALinear can do this base layer's matmul: a frozen nn.Linear or bitsandbytes Linear4bit whose
    compute dtype, the input's and the adapters' are one dtype (autocast, when on, in that dtype too)."""
    weight, bias = base.weight, base.bias
    if weight.requires_grad or (bias is not None and bias.requires_grad) or type(weight).__name__ == "DTensor":
        return False
    device = x.device.type
    if x.dtype != adapter_dtype or (torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) != x.dtype):
        return False
    if type(base) is nn.Linear:
        return weight.dtype == x.dtype
    if type(base).__name__ != "Linear4bit" or base.compute_dtype != x.dtype:
        return False
    state = getattr(weight, "quant_state", None) or getattr(base, "quant_state", None)
    return state is not None and not getattr(state, "packing_format_for_cpu", False)


def _dense_weight(base: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The base layer's weight [out, in] in `dtype`: dequantised for a 4-bit layer (read at call time, so a layer
    whose parameters FSDP gathered again before backward is read as it is then)."""
    if type(base) is nn.Linear:
        return base.weight
    from bitsandbytes.nn.modules import fix_4bit_weight_quant_state_from_module

    fix_4bit_weight_quant_state_from_module(base)
    return dequantize(base.weight, base.weight.quant_state, dtype)


class LoRALinear(torch.autograd.Function):
    """y = x W^T + bias + scaling * (dropout(x) A^T) B^T for a frozen (4-bit) W, in one autograd node.

    Saves the adapter's input and its [tokens, r] projection (what peft's two Linear nodes save); the weight is
    dequantised again in backward. Gradients: dx = g W + scaling (g B) A (through dropout's mask when it has one),
    dA = scaling (g B)^T dropout(x), dB = scaling g^T (dropout(x) A^T).
    """

    @staticmethod
    def forward(ctx, x, xd, base, a, b, scaling):
        flat = x.reshape(-1, x.shape[-1])
        flat_d = flat if xd is None else xd.reshape(flat.shape)
        weight = _dense_weight(base, x.dtype)
        bias = base.bias
        out = torch.mm(flat, weight.t()) if bias is None else torch.addmm(bias.to(x.dtype), flat, weight.t())
        low = torch.mm(flat_d, a.t())
        # in place: out-of-place addmm first copies `out` into a new result, a device-to-device memcpy of the whole
        # output (Gemma 3 4B, 8 rows, H200: 971 memcpys over two profiled steps, 4.1% of the GPU time; in place,
        # +4.1% useful tokens/s: experiments/results/efficiency_h200/h_session9/)
        out.addmm_(low, b.t(), alpha=scaling)
        ctx.save_for_backward(flat_d, low, a, b)
        ctx.base, ctx.scaling, ctx.dropped, ctx.in_shape = base, scaling, xd is not None, x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        flat_d, low, a, b = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).to(low.dtype)
        g_b = torch.mm(g, b)  # [tokens, r]
        grad_a = torch.mm(g_b.t(), flat_d).mul_(ctx.scaling) if ctx.needs_input_grad[3] else None
        grad_b = torch.mm(g.t(), low).mul_(ctx.scaling) if ctx.needs_input_grad[4] else None
        grad_x = grad_xd = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(g, _dense_weight(ctx.base, g.dtype))
            if not ctx.dropped:
                grad_x.addmm_(g_b, a, alpha=ctx.scaling)
            grad_x = grad_x.view(ctx.in_shape)
        if ctx.dropped and ctx.needs_input_grad[1]:
            grad_xd = torch.mm(g_b, a).mul_(ctx.scaling).view(ctx.in_shape)
        return grad_x, grad_xd, None, grad_a, grad_b, None


def fuse_lora_adds(model: nn.Module, fused_base: bool = True) -> int:
    """Give every peft LoRA Linear / Linear4bit the fused forward (in place); returns how many layers.

    `fused_base` (lora.fused_base): where it can, the base layer's matmul too, in one autograd node (LoRALinear)."""
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
        if hasattr(module, _UNFUSED):
            setattr(module, _OWN_BASE, fused_base)
    log.info(
        "LoRA: the adapter's output added inside B's matmul on %d layers (lora.fused)%s", fused,
        "; frozen bf16 / 4-bit base matmuls in the same autograd node (lora.fused_base)" if fused_base else "",
    )  # fmt: skip
    return fused
