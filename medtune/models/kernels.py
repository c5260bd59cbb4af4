"""Fused kernels from a maintained library (Liger) on the frozen model: RMSNorm, the gated MLP and RoPE.

    fused = apply_fused_kernels(model, "liger")   # in place; returns what was fused, e.g. ["rms_norm", "geglu", "rope"]

The GPU profile of a medtune step put ~45% of its CUDA time in elementwise kernels around the matmuls (RMSNorm,
GELU, casts). Liger's Triton kernels fuse each of them into one launch. Only the forward methods are rebound: the
modules, their (nf4 / LoRA) linear layers and the loss stay medtune's, so packing masks and the chunked loss are
untouched. Liger's own cross-entropy stays off (medtune's chunked loss never materialises the logits).
"""

from __future__ import annotations

import importlib.util
import logging

from torch import nn

from medtune.models.anatomy import causal_lm_of

log = logging.getLogger(__name__)
KERNELS = ("none", "liger")


class KernelsUnavailableError(RuntimeError):
    """The kernel library is not installed or does not cover this model."""


def apply_fused_kernels(model: nn.Module, kind: str) -> list[str]:
    """Fuse the elementwise pieces of a Gemma 3 or Llama model in place (kind: none | liger); returns what it fused."""
    if kind == "none":
        return []
    if kind not in KERNELS:
        raise ValueError(f"trainer.kernels={kind!r} is not one of {list(KERNELS)}.")
    missing = [name for name in ("liger_kernel", "triton") if importlib.util.find_spec(name) is None]
    if missing:
        raise KernelsUnavailableError(
            f"trainer.kernels=liger needs {' and '.join(missing)} (pip install liger-kernel; Triton comes with CUDA "
            "builds of torch), so it runs on CUDA GPUs only; set trainer.kernels=none."
        )
    lm = causal_lm_of(model)
    model_type = getattr(lm.config, "model_type", "")
    from liger_kernel.transformers import apply_liger_kernel_to_gemma3_text, apply_liger_kernel_to_llama

    common = {"rope": True, "rms_norm": True, "cross_entropy": False, "fused_linear_cross_entropy": False}
    if model_type == "gemma3_text":
        apply_liger_kernel_to_gemma3_text(geglu=True, model=lm, **common)
        fused = ["rms_norm", "geglu", "rope"]
    elif model_type == "llama":
        apply_liger_kernel_to_llama(swiglu=True, model=lm, **common)
        fused = ["rms_norm", "swiglu", "rope"]
    else:
        raise KernelsUnavailableError(f"trainer.kernels=liger covers gemma3_text and llama, not {model_type!r}.")
    log.info("fused kernels (liger): %s", ", ".join(fused))
    return fused
