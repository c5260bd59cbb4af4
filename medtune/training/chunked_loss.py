"""Cross-entropy over the output projection without ever materialising the [tokens, vocab] logits.

Gemma 3 has a 262k-token vocabulary: at 4 x 2048 tokens its fp32 logits alone take 8.6 GB and their gradient as
much again, more than the rest of a 4B LoRA step (../shared/GPU.md). `chunked_cross_entropy` keeps only the label
tokens (prompt tokens masked with -100 cost nothing), walks them `chunk_size` at a time, and computes each chunk's
loss *and* its gradient in the forward pass (softmax - one_hot is known as soon as the logits are), so at most one
chunk of logits is alive at any time, in forward and in backward, and the projection is not recomputed.

    loss_sum, n_tokens = chunked_cross_entropy(hidden, lm_head_of(model), labels, chunk_size=1024)
    (loss_sum / n_tokens).backward()
"""

from __future__ import annotations

import torch

from medtune.data.schema import IGNORE_INDEX
from medtune.training import ce_kernel


def _chunk_loss_and_grad(
    h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, softcap: float | None, kernel: str, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of token losses of one chunk (fp32) and d(sum)/d(logits) ([chunk, vocab]: the weight's dtype with the
    triton kernel, which writes it over the logits; fp32 with torch's ops)."""
    if kernel == "triton":
        logits = h @ weight.t()
        return ce_kernel.loss_and_grad_(logits, target, softcap, need_grad), logits
    logits = (h @ weight.t()).float()
    if softcap is not None:
        capped = torch.tanh(logits / softcap)
        logits = capped * softcap
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(1, target[:, None]).squeeze(1)
    loss = (lse - picked).sum()
    grad = torch.softmax(logits, dim=-1)
    del logits
    grad[torch.arange(target.numel(), device=grad.device), target] -= 1.0
    if softcap is not None:
        grad *= 1.0 - capped.square()  # d(c * tanh(z / c)) / dz
    return loss, grad


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Loss and gradients computed together, chunk by chunk; backward only scales the stored gradients."""

    @staticmethod
    def forward(ctx, hidden, weight, target, chunk_size, softcap, kernel, need_hidden_grad, need_weight_grad):
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_hidden_grad else None  # every row is written below
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight_grad else None
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size]
            chunk_loss, grad_logits = _chunk_loss_and_grad(
                h, weight, target[start : start + chunk_size], softcap, kernel, need_hidden_grad or need_weight_grad
            )
            loss += chunk_loss
            if grad_hidden is not None:
                torch.mm(grad_logits.to(weight.dtype), weight, out=grad_hidden[start : start + chunk_size])
            if grad_weight is not None:
                grad_weight += grad_logits.float().t() @ h.float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        out_hidden = grad_hidden * grad_loss.to(grad_hidden.dtype) if grad_hidden is not None else None
        out_weight = grad_weight * grad_loss if grad_weight is not None else None
        return out_hidden, out_weight, None, None, None, None, None, None


def chunked_cross_entropy(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int,
    softcap: float | None = None,
    kernel: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token cross-entropies in fp32, number of label tokens) of hidden [N, H] through weight [V, H].

    `labels[i]` is the target of `hidden[i]` (already shifted); IGNORE_INDEX (-100) rows are skipped. The logits
    are computed in the weight's dtype and reduced in fp32, under no autocast (it is disabled inside). `kernel`
    (trainer.loss_kernel): torch's ops, or one Triton kernel per chunk (`ce_kernel`); auto picks the kernel on CUDA.
    """
    if hidden.dim() != 2 or labels.shape != hidden.shape[:1] or lm_head_weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"shapes do not fit: hidden {tuple(hidden.shape)} must be [N, H], weight {tuple(lm_head_weight.shape)} "
            f"[V, H], labels {tuple(labels.shape)} [N]."
        )
    if chunk_size <= 0:
        raise ValueError(f"chunk_size={chunk_size} must be > 0 (trainer.loss_chunk_size).")
    kernel = ce_kernel.resolve(kernel, hidden.device)
    keep = (labels != IGNORE_INDEX).nonzero().squeeze(1)
    n_tokens = keep.numel()
    target = labels[keep]
    if n_tokens and (int(target.min()) < 0 or int(target.max()) >= lm_head_weight.shape[0]):
        raise ValueError(f"label ids must be in [0, {lm_head_weight.shape[0]}) or {IGNORE_INDEX}.")
    rows = hidden[keep]  # only label tokens reach the projection; the gather's backward scatters the gradient back
    grad_on = torch.is_grad_enabled()
    with torch.autocast(hidden.device.type, enabled=False):
        rows = rows.to(lm_head_weight.dtype)
        loss = _ChunkedCrossEntropy.apply(
            rows,
            lm_head_weight,
            target,
            chunk_size,
            softcap,
            kernel,
            grad_on and rows.requires_grad,
            grad_on and lm_head_weight.requires_grad,
        )
    return loss, torch.tensor(n_tokens, device=hidden.device)
