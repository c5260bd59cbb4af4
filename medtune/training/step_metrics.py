"""What a training step costs: memory per phase, useful and padded tokens/s, MFU from a stated FLOP count.

Definitions (used in every log line and table):
- useful tokens: real (non-pad) input tokens; label tokens: those that carry a loss.
- padded tokens/s counts every position of every row, pad included; useful tokens/s counts only real tokens.
- peak allocated / reserved GiB: torch.cuda.max_memory_allocated / max_memory_reserved on this rank since the
  phase began (phases: load, train, eval = held-out loss, lm_eval = the benchmark stage); CPU RSS from psutil.
- MFU: achieved training FLOP/s over the device's dense bf16 peak. FLOPs per token are
  2 * N_matmul * (1 forward + 1 input-gradient backward + f_ckpt recomputed forward) + 2 * N_lora * 3
  + attention 2 * 2 * n_layers * d_attn * ctx * (2 + f_ckpt) for a context of ctx tokens (score and value
  products, causal halves cancelling the full square), where N_matmul are the frozen linear weights (lm_head
  included, embeddings excluded) and f_ckpt the share of layers recomputed by gradient checkpointing. Frozen
  weights get no weight gradient, which is why the backward counts 2N and not 4N.
- MFU, NeMo's LoRA convention (`train/mfu_nemo`), for setting beside published LoRA figures (NVIDIA NeMo
  Automodel's performance summary: about 40-43% for 7-8B bf16 LoRA on one H100): (2 + N_lora / N_matmul) / 3 of the
  full-training FLOPs per token, 6 * N_matmul + 3 * 4 * n_layers * d_attn * ctx, recomputation never counted.
  Without checkpointing the two conventions nearly agree; with every layer recomputed medtune's counts a third more.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil
import torch

from medtune.files.space import GIB
from medtune.models.anatomy import head_dim_of

# Dense bf16 tensor-core peaks in TFLOP/s (vendor datasheets, no sparsity).
PEAK_BF16_TFLOPS = {
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "H200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "A10G": 70.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
}


def device_peak_tflops(device: torch.device) -> float | None:
    """Dense bf16 peak of a CUDA device by name, or None (CPU, unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops
    return None


def reset_peak_memory(device: torch.device, release_cache: bool = False) -> None:
    """Start a new memory phase: peaks are measured from here.

    release_cache=True first returns the cached blocks of earlier phases (or of the previous job of a multirun,
    same process), so the phase's peak reserved is its own; used at a job's start and before lm-eval, never inside
    the training loop (re-reserving every step would cost time).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        if release_cache:
            import gc

            gc.collect()
            torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def memory_metrics(device: torch.device, phase: str) -> dict[str, float]:
    """Peak allocated/reserved GiB of this rank in `phase`, what is still allocated at its end, and the process RSS."""
    out = {f"sys/{phase}/cpu_rss_gib": psutil.Process(os.getpid()).memory_info().rss / GIB}
    if device.type == "cuda":
        out[f"sys/{phase}/alloc_gib"] = torch.cuda.memory_allocated(device) / GIB
        out[f"sys/{phase}/peak_alloc_gib"] = torch.cuda.max_memory_allocated(device) / GIB
        out[f"sys/{phase}/peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / GIB
    return out


@dataclass
class FlopModel:
    """Per-token training FLOPs of a LoRA/QLoRA step on a decoder-only model."""

    matmul_params: int  # frozen linear weights incl. lm_head, excl. embeddings
    lora_params: int
    n_layers: int
    attn_dim: int  # num_heads * head_dim
    ckpt_fraction: float  # share of decoder layers recomputed in backward

    def per_token(self, ctx_len: float) -> float:
        """Training FLOPs for one token that attends to ctx_len earlier tokens on average."""
        passes = 2.0 + self.ckpt_fraction  # forward, input-gradient backward, recompute
        dense = 2.0 * self.matmul_params * passes + 6.0 * self.lora_params
        attention = 4.0 * self.n_layers * self.attn_dim * ctx_len * passes
        return dense + attention

    def per_token_nemo(self, ctx_len: float) -> float:
        """NeMo's LoRA convention: (2 + N_lora / N_matmul) / 3 of full training's FLOPs, no recomputation."""
        full = 6.0 * self.matmul_params + 12.0 * self.n_layers * self.attn_dim * ctx_len
        return full * (2.0 + self.lora_params / self.matmul_params) / 3.0


def flop_model(model: torch.nn.Module, checkpointed_layers: int) -> FlopModel:
    """Count the parameters that enter FlopModel from a (peft-wrapped) causal LM."""
    config = model.config
    matmul, lora = 0, 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):  # bitsandbytes Linear4bit/Linear8bitLt subclass it
            continue
        count = int(module.in_features) * int(module.out_features)  # logical size, even when packed 4-bit
        if "lora_" in name:
            lora += count
        else:
            matmul += count  # includes lm_head, tied or not
    n_layers = config.num_hidden_layers
    frac = min(checkpointed_layers, n_layers) / n_layers
    return FlopModel(matmul, lora, n_layers, config.num_attention_heads * head_dim_of(config), frac)


class StepTimer:
    """Wall time of a step, synchronising CUDA so the time covers the kernels."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = 0.0

    def __enter__(self) -> StepTimer:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self.start


def throughput_metrics(
    useful_tokens: int, row_tokens: int, label_tokens: int, seconds: float, flops: float, peak_tflops: float | None,
    flops_nemo: float | None = None,
) -> dict[str, float]:  # fmt: skip
    """Per-GPU throughput of one optimizer step (this rank's tokens over its wall time)."""
    out = {
        "train/step_s": seconds,
        "train/useful_tokens_per_s": useful_tokens / seconds,
        "train/padded_tokens_per_s": row_tokens / seconds,
        "train/label_tokens_per_s": label_tokens / seconds,
        "train/tflops_per_s": flops / seconds / 1e12,
    }
    if peak_tflops:
        out["train/mfu"] = flops / seconds / 1e12 / peak_tflops
        if flops_nemo is not None:
            out["train/mfu_nemo"] = flops_nemo / seconds / 1e12 / peak_tflops
    return out
