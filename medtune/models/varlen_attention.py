"""Packed rows through PyTorch's own FlashAttention-2 variable-length kernel: exact, nothing to compile or install.

`packing.attention=varlen` registers `medtune_varlen` with transformers' AttentionInterface. Each packed batch
carries `cu_seq_lens_*` (every document, and every row's pad tail, is one sequence of the flattened rows; see
document_masks.flash_varlen_kwargs) and the attention runs `torch.ops.aten._flash_attention_forward` over them:
causal, with the layer's sliding window (FlashAttention's `window_size_left = window - 1` is transformers' rule
`q - kv < window`), the module's scale, grouped key/value heads as they are (the kernel shares each key/value head
among its group of query heads). Backward is the matching `_flash_attention_backward`.

Why: flex attention isolates documents as well but is compiled by inductor at the first step of every process
(~40 s for Gemma 3 4B on an H200, experiments/results/efficiency_h200); the flash_attn package is not installable
everywhere. The aten kernel ships with every CUDA build of torch (sm80+, fp16/bf16).

On a CPU (tests) the same function runs a dense-masked sdpa over the same sequences, so the plumbing (kwargs through
the model, windows, head grouping, layout) is tested everywhere; the flash kernel itself by the `gpu` tests.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)
NAME = "medtune_varlen"
_NOT_SUPPORTED = ("s_aux", "sinks")  # attention sinks: not in FlashAttention-2's varlen kernel


def flash_varlen_available(device: torch.device, dtype: torch.dtype, head_dim: int | None = None) -> bool:
    """Whether torch's built-in FlashAttention-2 kernel runs here (CUDA sm80+, fp16/bf16), forward and backward.

    With `head_dim`, a two-token probe runs the kernel both ways once (per device, dtype and head size): some GPUs
    lack the shared memory for the backward of large heads (FlashAttention-2 with head_dim 256), and that must show
    here, where `packing.attention=auto` can still choose flex, not at the first training step.
    """
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16) or not torch.cuda.is_available():
        return False
    if torch.cuda.get_device_capability(device) < (8, 0) or not hasattr(torch.ops.aten, "_flash_attention_forward"):
        return False
    return head_dim is None or _probe(str(device), dtype, head_dim)


@functools.cache
def _probe(device: str, dtype: torch.dtype, head_dim: int) -> bool:
    q = torch.randn(2, 2, head_dim, device=device, dtype=dtype, requires_grad=True)
    cu = torch.tensor([0, 2], dtype=torch.int32, device=device)
    try:
        _FlashVarlen.apply(q, q, q, cu, 2, head_dim**-0.5, None).sum().backward()
        torch.cuda.synchronize(device)
    except Exception as err:  # whatever the kernel raises here, training must not be the place to find out
        log.warning("torch's flash varlen kernel fails here for head_dim %d (%s); using flex attention", head_dim, err)
        return False
    return True


def register() -> str:
    """Make `medtune_varlen` a valid attn_implementation (idempotent); returns the name.

    Its mask function is flash's: no mask at all unless a 2D padding mask has a zero, which the attention then
    refuses (it cannot see padding; right-padded rows without a mask are exact for their real tokens).
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, varlen_attention_forward)
    if NAME not in AttentionMaskInterface._global_mapping:
        AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["flash_attention_2"])
    return NAME


def bucket_max_len(longest: int, row_len: int) -> int:
    """The max sequence length told to the kernel: the next power of two >= the longest sequence, at most a row.

    Any bound >= the true longest is exact (it only sizes the launch grid); a few buckets instead of one value per
    batch keep `trainer.compile` from recompiling the layers for every batch.
    """
    return min(row_len, max(64, 1 << max(0, math.ceil(math.log2(max(longest, 1))))))


class _FlashVarlen(torch.autograd.Function):
    """aten's FlashAttention-2 forward/backward over (total_tokens, heads, head_dim) with cumulative lengths."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int,
                scale: float, window_left: int | None) -> torch.Tensor:  # fmt: skip
        right = 0 if window_left is not None else None
        out, lse, rng, unused, _ = torch.ops.aten._flash_attention_forward(
            q, k, v, cu, cu, max_len, max_len, 0.0, True, False,
            scale=scale, window_size_left=window_left, window_size_right=right,
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, out, lse, cu, rng, unused)
        ctx.max_len, ctx.scale, ctx.window_left = max_len, scale, window_left
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        q, k, v, out, lse, cu, rng, unused = ctx.saved_tensors
        right = 0 if ctx.window_left is not None else None
        dq, dk, dv = torch.ops.aten._flash_attention_backward(
            grad.contiguous(), q, k, v, out, lse, cu, cu, ctx.max_len, ctx.max_len, 0.0, True, rng, unused,
            scale=ctx.scale, window_size_left=ctx.window_left, window_size_right=right,
        )  # fmt: skip
        return dq, dk, dv, None, None, None, None


def reference_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, scale: float,
                     window_left: int | None) -> torch.Tensor:  # fmt: skip
    """The same attention with a dense mask (CPU, and the GPU tests' reference): (total, heads, dim) in and out."""
    total = q.shape[0]
    seq = torch.bucketize(torch.arange(total, device=q.device), cu[1:].to(q.device), right=True)
    idx = torch.arange(total, device=q.device)
    allowed = (seq[:, None] == seq[None, :]) & (idx[None, :] <= idx[:, None])
    if window_left is not None:
        allowed &= idx[:, None] - idx[None, :] <= window_left
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=allowed,
                                         scale=scale)  # fmt: skip
    return out.transpose(0, 1)


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: [rows, heads, seq, dim] in, [rows, seq, heads, dim] out."""
    if attention_mask is not None:
        raise RuntimeError(
            f"{NAME} got a padding mask: it attends within the packed documents of cu_seq_lens_q only. Run padded "
            "batches under medtune.models.document_masks.unpacked_attention (sdpa), as evaluation does."
        )
    if dropout or softcap is not None or any(kwargs.get(name) is not None for name in _NOT_SUPPORTED):
        raise NotImplementedError(
            f"{NAME} has no attention dropout, logit softcapping or attention sinks "
            f"(dropout={dropout}, softcap={softcap}); use packing.attention=flex for this model."
        )
    rows, heads, seq_len, dim = query.shape
    cu, max_len = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    if cu is None:  # no packing and no padding: each row is one causal sequence
        cu = torch.arange(0, (rows + 1) * seq_len, seq_len, dtype=torch.int32, device=query.device)
        max_len = seq_len
    groups = heads // key.shape[1]
    scale = scaling if scaling is not None else dim**-0.5
    window_left = sliding_window - 1 if sliding_window else None
    q = query.transpose(1, 2).reshape(rows * seq_len, heads, dim)
    k, v = (t.transpose(1, 2).reshape(rows * seq_len, t.shape[1], dim) for t in (key, value))
    if q.is_cuda and q.dtype not in (torch.float16, torch.bfloat16):
        raise RuntimeError(
            f"{NAME} runs FlashAttention-2, which needs fp16/bf16 activations (got {q.dtype}): set "
            "trainer.autocast_dtype=bfloat16 (or model.dtype=bfloat16), or packing.attention=flex."
        )
    if q.is_cuda:
        out = _FlashVarlen.apply(q, k, v, cu, int(max_len), scale, window_left)
    else:
        k, v = (t.repeat_interleave(groups, dim=1) if groups > 1 else t for t in (k, v))  # as sdpa's enable_gqa
        out = reference_varlen(q, k, v, cu, scale, window_left)
    return out.reshape(rows, seq_len, heads, dim), None
