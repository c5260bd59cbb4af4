"""One chunk's cross-entropy and its gradient in one Triton kernel, the gradient written over the logits in place.

The torch path of `chunked_loss` turns each [chunk, vocab] block of bf16 logits into an fp32 copy, reads it for the
logsumexp, again for the softmax (written out in fp32), and casts that to bf16 for the backward matmul: 6-9 GB read
and written per 1024 tokens of Gemma 3's 262k vocabulary, and 2 GB of fp32 temporaries. Here each row is read twice
in its own dtype (once for its logsumexp, once to write softmax - one_hot over it) and the per-token loss is kept
in fp32: 1.6 GB, one launch, no temporaries (the GB figures count passes; they are not measured). Measured (H200,
Gemma 3 4B, 8 rows of 2048 tokens): +2.5% useful tokens/s and 1.1 GiB less peak memory
(experiments/results/efficiency_h200/h_session9/).

    loss_sum = loss_and_grad_(logits, target, softcap)  # logits: [N, V] contiguous, CUDA; now d(loss_sum)/d(logits)

Triton is imported only when the kernel is first used (CPU installs do not have it). Tests run it under Triton's
interpreter where triton is installed, and on the GPU (`-m gpu`).
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

from medtune.config.checks import check_choice
from medtune.config.training import LOSS_KERNELS


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve(choice: str, device: torch.device) -> str:
    """trainer.loss_kernel -> "torch" or "triton" for logits on `device` (auto: triton on CUDA when installed)."""
    check_choice("trainer.loss_kernel", choice, LOSS_KERNELS)
    if choice == "torch":
        return "torch"
    usable = device.type == "cuda" and triton_available()
    # asked for by name, Triton's interpreter (TRITON_INTERPRET=1: the CPU tests) runs it on CPU tensors, slowly
    interpreted = choice == "triton" and os.environ.get("TRITON_INTERPRET") == "1" and triton_available()
    if choice == "triton" and not (usable or interpreted):
        raise RuntimeError(
            f"trainer.loss_kernel=triton needs a CUDA device and the triton package (device {device}, triton "
            f"{'installed' if triton_available() else 'not installed'}); use trainer.loss_kernel=auto or torch."
        )
    return "triton" if usable or interpreted else "torch"


@functools.cache
def _kernel():
    """Compiled lazily: the @triton.jit function, built on first use."""
    import triton
    import triton.language as tl

    @triton.jit
    def ce_rows(
        x_ptr,
        stride,
        y_ptr,
        loss_ptr,
        n_cols,
        softcap,
        HAS_SOFTCAP: tl.constexpr,
        WRITE_GRAD: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        x_ptr += row * stride
        y = tl.load(y_ptr + row)
        cols = tl.arange(0, BLOCK)
        # pass 1: logsumexp of the (capped) row, online over blocks
        m = tl.max(tl.full([BLOCK], float("-inf"), tl.float32), axis=0)
        s = tl.sum(tl.zeros([BLOCK], tl.float32), axis=0)
        for start in range(0, n_cols, BLOCK):
            z = tl.load(x_ptr + start + cols, mask=start + cols < n_cols, other=float("-inf")).to(tl.float32)
            if HAS_SOFTCAP:
                z = softcap * (2.0 * tl.sigmoid(2.0 * z / softcap) - 1.0)  # c * tanh(z / c); -inf stays -c
                z = tl.where(start + cols < n_cols, z, float("-inf"))
            m_new = tl.maximum(m, tl.max(z, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
            m = m_new
        lse = m + tl.log(s)
        z_y = tl.load(x_ptr + y).to(tl.float32)
        if HAS_SOFTCAP:
            z_y = softcap * (2.0 * tl.sigmoid(2.0 * z_y / softcap) - 1.0)
        tl.store(loss_ptr + row, lse - z_y)
        # pass 2: d(lse - z_y)/dx = softmax(z) - one_hot(y), times dz/dx = 1 - tanh^2 under the cap
        for start in range(0, n_cols if WRITE_GRAD else 0, BLOCK):
            inside = start + cols < n_cols
            x = tl.load(x_ptr + start + cols, mask=inside, other=0.0).to(tl.float32)
            z = x
            if HAS_SOFTCAP:
                z = softcap * (2.0 * tl.sigmoid(2.0 * x / softcap) - 1.0)
            g = tl.exp(z - lse) - tl.where(start + cols == y, 1.0, 0.0)
            if HAS_SOFTCAP:
                t = z / softcap
                g = g * (1.0 - t * t)
            tl.store(x_ptr + start + cols, g.to(x_ptr.dtype.element_ty), mask=inside)

    return ce_rows


def loss_and_grad_(
    logits: torch.Tensor, target: torch.Tensor, softcap: float | None, write_grad: bool = True
) -> torch.Tensor:
    """Sum of the rows' cross-entropies (fp32 scalar); `logits` [N, V] is overwritten with its gradient
    (left as it is with write_grad=False).

    Every target must be a valid class id (the caller drops ignored positions first).
    """
    if logits.dim() != 2 or not logits.is_contiguous() or target.shape != logits.shape[:1]:
        raise ValueError(
            f"logits must be [N, V] and contiguous, target [N]: got {tuple(logits.shape)}, "
            f"{tuple(target.shape)}, contiguous={logits.is_contiguous()}."
        )
    import triton

    n_rows, n_cols = logits.shape
    loss = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
    if n_rows:
        block = min(8192, triton.next_power_of_2(n_cols))
        on_device = torch.cuda.device(logits.device) if logits.is_cuda else contextlib.nullcontext()
        with on_device:  # Triton launches on the current device: the logits' own, whatever the caller set
            _kernel()[(n_rows,)](
                logits,
                logits.stride(0),
                target.contiguous(),
                loss,
                n_cols,
                float(softcap or 1.0),
                HAS_SOFTCAP=softcap is not None,
                WRITE_GRAD=write_grad,
                BLOCK=block,
                num_warps=16 if block >= 4096 else 4,
            )
    return loss.sum()
