"""Fused kernels from a maintained library (Liger) on the frozen model: RMSNorm, the gated MLP and RoPE.

    fused = apply_fused_kernels(model, "liger")   # in place; returns what was fused, e.g. ["rms_norm", "geglu", "rope"]
    fused = apply_fused_kernels(model, "liger", rms_norm="torch")   # RMSNorm by torch's own fused op instead

The GPU profile of a medtune step put ~45% of its CUDA time in elementwise kernels around the matmuls (RMSNorm,
GELU, casts). Liger's Triton kernels fuse each of them into one launch. Only the forward methods are rebound: the
modules, their (nf4 / LoRA) linear layers and the loss stay medtune's, so packing masks and the chunked loss are
untouched. Liger's own cross-entropy stays off (medtune's chunked loss never materialises the logits).

`rms_norm="torch"` (trainer.rms_norm) computes every RMSNorm with torch's fused `_fused_rms_norm` op (one CUDA kernel
forward and one backward) instead of Liger's or transformers' own. Liger's RMSNorm costs ~0.2 ms of Python per call
(the profile at 4 rows of 2048 tokens, experiments/results/efficiency_h200/e_peers/profile_mb4), and Gemma 3 runs six
per layer per pass; the op is one dispatch (+8.2% at 4 rows on an H200, no change at 8: g_torch_norm). The kernel
normalises and scales in fp32 and rounds once; its weight is in the input's dtype, so Gemma 3's (1 + w) is rounded
to bf16 first, and Llama (which rounds before its bf16 scale) rounds once after it: both within one bf16 step of
transformers' result, exact in fp32.
"""

from __future__ import annotations

import importlib.util
import logging
import types

import torch
from torch import nn

from medtune.models.anatomy import causal_lm_of
from medtune.models.arch_spec import FUSABLE_MODEL_TYPES

log = logging.getLogger(__name__)
KERNELS = ("none", "liger")
RMS_NORMS = ("kernels", "torch")
LIGER_MODEL_TYPES = FUSABLE_MODEL_TYPES  # what apply_fused_kernels knows how to patch
_SCALE = "_medtune_norm_scale"  # a frozen Gemma 3 norm's (1 + w) in the input's dtype, with what it was made from
_fused_op = torch.ops.aten._fused_rms_norm  # (input, normalized_shape, weight, eps) -> (output, rstd)


class KernelsUnavailableError(RuntimeError):
    """The kernel library is not installed or does not cover this model."""


def _liger_missing() -> list[str]:
    """The packages Liger's kernels need that do not import here."""
    return [name for name in ("liger_kernel", "triton") if importlib.util.find_spec(name) is None]


def liger_refusal(device_type: str, model_type: str | None) -> str | None:
    """Why Liger cannot run here (None: it can): the device, a missing package or an architecture it does not
    cover. model_type None: not known before loading (a hub model without a local config.json)."""
    if device_type != "cuda":
        return f"liger: needs a CUDA GPU (device is {device_type})"
    missing = _liger_missing()
    if missing:
        return f"liger: {' and '.join(missing)} not installed (pip install 'medtune[gpu]')"
    if model_type not in LIGER_MODEL_TYPES:
        what = model_type or "an architecture unknown before loading"
        return f"liger: covers {', '.join(LIGER_MODEL_TYPES)}, not {what}"
    return None


def resolve_kernels(kind: str, rms_norm: str, device_type: str, model_type: str | None) -> tuple[str, str, list[str]]:
    """trainer.kernels and trainer.rms_norm with `auto` decided for this device and architecture; returns both
    and the reasons an `auto` choice turned a fast path down. auto: Liger on CUDA where it imports and covers the
    model; torch's fused RMSNorm on CUDA (it is one dispatch a call, with or without Liger's other kernels)."""
    refused = []
    if kind == "auto":
        why = liger_refusal(device_type, model_type)
        kind = "none" if why else "liger"
        refused += [why] if why else []
    if rms_norm == "auto":
        known = model_type is None or model_type in LIGER_MODEL_TYPES  # the norms use_torch_rms_norm rebinds
        rms_norm = "torch" if device_type == "cuda" and known else "kernels"
        if rms_norm == "kernels" and device_type != "cuda":
            refused.append(f"rms_norm: torch's fused op is taken on CUDA only (device is {device_type})")
        elif rms_norm == "kernels":
            refused.append(
                f"rms_norm: torch's fused op replaces the RMSNorm of {', '.join(LIGER_MODEL_TYPES)} only, "
                f"not {model_type}"
            )
    return kind, rms_norm, refused


def apply_fused_kernels(model: nn.Module, kind: str, rms_norm: str = "kernels") -> list[str]:
    """Fuse the elementwise pieces of a Gemma 3 or Llama model in place (kind: auto | none | liger; rms_norm: auto
    | kernels | torch); returns what it fused."""
    if "auto" in (kind, rms_norm):
        param = next(model.parameters(), None)
        device_type = param.device.type if param is not None else "cpu"
        model_type = getattr(getattr(causal_lm_of(model), "config", None), "model_type", None)
        kind, rms_norm, refused = resolve_kernels(kind, rms_norm, device_type, model_type)
        for why in refused:
            log.info("fast path not taken: %s", why)
    if kind not in KERNELS:
        raise ValueError(f"trainer.kernels={kind!r} is not one of {list(KERNELS)}.")
    if rms_norm not in RMS_NORMS:
        raise ValueError(f"trainer.rms_norm={rms_norm!r} is not one of {list(RMS_NORMS)}.")
    fused = []
    if rms_norm == "torch":
        n = use_torch_rms_norm(model)
        if not n:
            raise KernelsUnavailableError("trainer.rms_norm=torch found no Gemma 3 or Llama RMSNorm in the model.")
        fused.append(f"rms_norm:torch({n})")
    if kind == "none":
        return fused
    lm = causal_lm_of(model)
    model_type = getattr(lm.config, "model_type", "")
    missing = _liger_missing()
    if missing:
        raise KernelsUnavailableError(
            f"trainer.kernels=liger needs {' and '.join(missing)} (pip install 'medtune[gpu]' with a CUDA build of "
            "torch), so it runs on CUDA GPUs only; set trainer.kernels=none (or auto)."
        )
    from liger_kernel.transformers import apply_liger_kernel_to_gemma3_text, apply_liger_kernel_to_llama

    liger_norm = rms_norm == "kernels"
    common = {"rope": True, "rms_norm": liger_norm, "cross_entropy": False, "fused_linear_cross_entropy": False}
    if model_type == "gemma3_text":
        apply_liger_kernel_to_gemma3_text(geglu=True, model=lm, **common)
        fused += ["rms_norm", "geglu", "rope"] if liger_norm else ["geglu", "rope"]
    elif model_type == "llama":
        apply_liger_kernel_to_llama(swiglu=True, model=lm, **common)
        fused += ["rms_norm", "swiglu", "rope"] if liger_norm else ["swiglu", "rope"]
    else:
        raise KernelsUnavailableError(f"trainer.kernels=liger covers gemma3_text and llama, not {model_type!r}.")
    log.info("fused kernels: %s", ", ".join(fused))
    return fused


def use_torch_rms_norm(model: nn.Module) -> int:
    """Every Gemma 3 / Llama RMSNorm of the model computed by torch's fused op (in place); returns how many."""
    forwards = {"Gemma3RMSNorm": _gemma_norm_forward, "LlamaRMSNorm": _llama_norm_forward}
    n = 0
    for module in model.modules():
        forward = forwards.get(type(module).__name__)
        if forward is not None:
            module.forward = types.MethodType(forward, module)
            n += 1
    return n


def _fused_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) * weight, computed in fp32 and rounded once to x's dtype. The CUDA kernel takes the weight in x's
    dtype only (on the H200 it refused an fp32 one; computing in fp32 instead cost 12% of an 8-row step), so the weight
    is cast to it. aten._fused_rms_norm is not an autocast op: under autocast it keeps x's dtype too."""
    weight = weight if weight.dtype == x.dtype else weight.to(x.dtype)
    if x.dim() == 4 and not x.is_contiguous() and x.transpose(1, 2).is_contiguous():
        # Gemma 3's q/k norms get [batch, heads, seq, dim] views of the projection's [batch, seq, heads, dim] output;
        # the kernel would copy them, and Liger's RoPE copy its result back (the H200 profile of two 8-row steps: 952
        # copies of q/k-sized tensors, 14 per layer per step, 4.5% of the GPU time). The norm is per last-dim vector,
        # so it is computed on the contiguous layout and handed back as the same view: no copy, the same numbers.
        return _fused_op(x.transpose(1, 2), [x.shape[-1]], weight, eps)[0].transpose(1, 2)
    return _fused_op(x, [x.shape[-1]], weight, eps)[0]


def _gemma_norm_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    weight = self.weight
    if weight.requires_grad:  # a trained norm: (1 + w) stays in the graph
        return _fused_rms_norm(x, 1.0 + weight.float(), self.eps)
    made = self.__dict__.get(_SCALE)
    stamp = (weight.data_ptr(), weight._version, weight.device, x.dtype)
    if made is None or made[0] != stamp:
        made = (stamp, (1.0 + weight.detach().float()).to(x.dtype))
        self.__dict__[_SCALE] = made
    return _fused_rms_norm(x, made[1], self.eps)


def _llama_norm_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _fused_rms_norm(x, self.weight, self.variance_epsilon)
