"""The parts of the memory estimate: frozen weights by storage, activations and the chunked loss, in bytes.

medtune/memory/estimate.py reads the architecture, adds the adapters and optimizer state and picks the peak moment; the
shape (`Arch`) and the GPU-calibrated numbers (`Calibration`) are defined here. No torch import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from medtune.config import TrainConfig
from medtune.models.arch_spec import FUSABLE_MODEL_TYPES

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
NF4_BLOCK = 64  # bitsandbytes 4-bit blocksize: one absmax per 64 weights
NF4_BLOCK2 = 256  # double quantisation: the absmax values are themselves quantised in blocks of 256
NF4_CODE_BYTES = 16 * 4  # the 16-entry fp32 NF4 lookup table, one per quantised weight
DQ_CODE_BYTES = 256 * 4 + 4  # double quant: 256-entry fp32 dynamic map + fp32 offset, one per quantised weight


@dataclass(frozen=True)
class Calibration:
    """Numbers the GPU measurements calibrate (bytes per token per unit of width unless said otherwise).

    Two kernel paths (`KernelPath`): transformers' own modules, and the fused ones that the defaults take on a CUDA
    GPU (Liger's gated MLP, torch's fused RMSNorm, the flash varlen attention). Each number is either a count of
    the tensors saved for backward or, where marked, fitted to a measured peak:
    - transformers' path, 2026-11-25, H100 80GB, `python -m medtune.bench --steps 10 --warmup 3`: Gemma 3 4B text
      architecture (random weights), 1 x 2048 rows, LoRA r=16 on all linear layers (dropout 0.05, fp32), every
      layer checkpointed, torch's loss ops: peak allocated bf16_pad 8.61 GiB, nf4_pad 4.06, bf16_packed 9.76,
      nf4_packed 5.34; and (issue 30, H100, 2026-12-07) nf4 packed 8 x 2048: 9.91, 4 x 2048: 6.55.
    - fused path (issue 30, H100, 2026-12-07), nf4, bf16 adapters, dropout 0, 8 x 2048 rows: every layer
      checkpointed 7.84 GiB, every 2nd 34.38, none 61.75; bf16 base 12.23 and, none checkpointed, 66.18; 4 x 2048
      every layer 5.48.
    """

    norm_bytes: float = 4.0  # transformers' RMSNorm keeps an fp32 copy of its input for backward
    fused_norm_bytes: float = 2.0  # torch's and Liger's fused RMSNorm keep the bf16 input (+ one fp32 rstd a row)
    lora_input_bytes: float = 2.0  # bf16 copy of a LoRA input saved by lora_A (+1 for the dropout mask if p > 0)
    mlp_bytes: float = 6.0  # gate out (act input), act out and up out, bf16 each: 3 x 2 bytes per intermediate unit
    fused_mlp_bytes: float = 4.0  # Liger's GeGLU/SwiGLU keeps gate and up and recomputes the activation
    attn_bytes: float = 2.0  # q, k, v after RoPE and the attention output, bf16
    eager_score_bytes: float = 6.0  # eager: fp32 softmax probs + their bf16 copy, per head per (query, key) pair
    # backward working set on top of the stored activations and the recomputed layer, per token, as a multiple of
    # (16 x hidden + 8 x intermediate) bytes (gradients of the residual stream and of gate/up). Fitted to the peaks:
    # peft's own LoRA forward (lora.fused=false; every measurement before 2026-11-30) 1.0; lora.fused with
    # transformers' modules 0.46 (the 8- and 4-row nf4 peaks alone: 0.48, 0.44); lora.fused with the fused kernels
    # 0.21 (8 rows: 0.21, 4 rows: 0.23).
    work_hidden_bytes: float = 16.0
    work_intermediate_bytes: float = 8.0
    peft_work_scale: float = 1.0
    work_scale: float = 0.46
    fused_work_scale: float = 0.21
    # the chunked loss holds two fp32 [chunk, vocab] buffers at once: the logits and logsumexp's shifted exp, then
    # the logits and the softmax gradient. 3.0 assumed a third; the H100 packed runs fit 2.02-2.04.
    logits_fp32_copies: float = 2.0
    fsdp_gathered_layers: float = 2.0  # FSDP2 holds the current and the prefetched layer unsharded
    fixed_bytes: int = 32 * 1024**2  # cuBLAS workspace and small allocations
    scale: float = 1.0  # multiplies the activation terms (one-number calibration)


@dataclass(frozen=True)
class KernelPath:
    """Which implementation computes each piece of a decoder layer, as far as saved tensors are concerned."""

    fused_norm: bool  # torch's or Liger's RMSNorm (bf16 input saved) instead of transformers' (fp32 copy)
    fused_mlp: bool  # Liger's gated MLP (activation recomputed in backward)
    kv_expanded: bool  # sdpa/eager with a mask expand k and v to the query heads; flash, varlen and flex do not


def kernel_path(cfg: TrainConfig, arch: Arch) -> KernelPath:
    """The path a CUDA GPU takes for cfg. `auto` choices resolve as on a GPU with the GPU install (liger-kernel):
    Liger for Gemma 3 and Llama, torch's RMSNorm, the flash varlen kernel for packed rows. A run resolves them
    for its machine before it estimates (training/fast_paths.py), so there the path is what will run."""
    tc = cfg.trainer
    covered = arch.model_type in FUSABLE_MODEL_TYPES or arch.model_type == "gemma3"
    liger = tc.kernels == "liger" or (tc.kernels == "auto" and covered)
    norm = tc.rms_norm == "torch" or (tc.rms_norm == "auto" and covered) or liger
    if cfg.packing.mode == "packed":
        kv_expanded = cfg.packing.attention in ("sdpa", "eager")
    else:
        kv_expanded = cfg.model.attn_implementation not in ("flex_attention", "flash_attention_2")
    return KernelPath(fused_norm=norm, fused_mlp=liger, kv_expanded=kv_expanded)


@dataclass(frozen=True)
class Arch:
    """The shape of a decoder-only transformer, as far as memory is concerned."""

    model_type: str
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def gemma(self) -> bool:
        return self.model_type.startswith("gemma3")

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each projection of one decoder layer."""
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, self.q_dim),
            "k_proj": (h, self.kv_dim),
            "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }


def quantized_bytes(n: int, method: str, double_quant: bool) -> int:
    """Bytes of one bitsandbytes-quantised weight of n elements, its quantisation state included.

    nf4: n/2 bytes of packed 4-bit codes + the 16-entry fp32 code (64 B) + per 64-weight block either an fp32 absmax
    (4 B) or, with double quantisation, a uint8 absmax (1 B) plus one fp32 absmax per 256 blocks, the 256-entry fp32
    map and the fp32 offset (1028 B). int8 (LLM.int8): n bytes + one fp32 scale per output row (added by the caller).
    """
    if method == "int8":
        return n
    blocks = math.ceil(n / NF4_BLOCK)
    stats = blocks + 4 * math.ceil(blocks / NF4_BLOCK2) + DQ_CODE_BYTES if double_quant else 4 * blocks
    return math.ceil(n / 2) + NF4_CODE_BYTES + stats


def weight_bytes(arch: Arch, cfg: TrainConfig) -> dict[str, int]:
    """Frozen base bytes by storage: decoder linears (quantised or model.dtype), embeddings/norms/lm_head, buffers.

    Per layer: the 7 projections (q, k, v, o, gate, up, down; no biases), 2 RMSNorms of `hidden` (Llama) or 4 plus
    the q/k norms of `head_dim` (Gemma 3). Outside the layers: the embedding vocab x hidden, the final norm and, when
    not tied, lm_head vocab x hidden: all in model.dtype, since transformers/bitsandbytes skip the output projection
    and tied weights. Buffers: RoPE inv_freq and original_inv_freq (head_dim/2 fp32 each) per rotary type (2 for
    Gemma 3: sliding and full) and Gemma 3's embed_scale scalar in model.dtype.
    """
    dtype_b, q = DTYPE_BYTES[cfg.model.dtype], cfg.quantization
    linear = 0
    for n_in, n_out in arch.linears().values():
        n = n_in * n_out
        if q.method == "none":
            linear += n * dtype_b
        else:
            linear += quantized_bytes(n, q.method, q.double_quant) + (4 * n_out if q.method == "int8" else 0)
    norms = 4 * arch.hidden + 2 * arch.head_dim if arch.gemma else 2 * arch.hidden
    layers = arch.layers * (linear + norms * dtype_b)
    embed = arch.vocab * arch.hidden * (1 if arch.tied else 2) + arch.hidden  # + final norm
    rope_types = 2 if arch.gemma else 1
    buffers = rope_types * 2 * (arch.head_dim // 2) * 4 + (dtype_b if arch.gemma else 0)
    return {"layers": layers, "embed_head": embed * dtype_b, "buffers": buffers}


def quant_state_bytes(arch: Arch, cfg: TrainConfig) -> int:
    """Bytes of the decoder layers' quantisation state (nf4: the absmax blocks, double-quant statistics and code
    tables; int8: the row scales): `quantized_bytes` less the packed codes. bitsandbytes keeps it on the module
    (`Linear4bit.quant_state`), not in a parameter, so FSDP2 neither shards it nor moves it with CPUOffloadPolicy:
    it stays whole on the GPU (LLaMA 3.3 70B nf4: 1.01 GiB). Used for sharding.cpu_offload only; without offload the
    N-rank estimate still divides it by N, as the 2-rank H200 fit was made (the root term may have absorbed it)."""
    method = cfg.quantization.method
    if method == "none":
        return 0
    per_layer = 0
    for n_in, n_out in arch.linears().values():
        n = n_in * n_out
        codes = math.ceil(n / 2) if method == "nf4" else n
        per_layer += (
            quantized_bytes(n, method, cfg.quantization.double_quant) - codes + (4 * n_out if method == "int8" else 0)
        )
    return arch.layers * per_layer


def adapted(cfg: TrainConfig, name: str) -> bool:
    """Whether lora.target_modules adapts the projection `name` (e.g. 'q_proj')."""
    targets = list(cfg.lora.target_modules)
    return targets == ["all-linear"] or any(t.rsplit(".", 1)[-1] == name for t in targets)


def seq_len(cfg: TrainConfig) -> int:
    """The row length the estimate is for: packing.max_seq_len."""
    if not cfg.packing.max_seq_len:
        raise ValueError("packing.max_seq_len is empty (packing=none): set it to the longest row you expect.")
    return cfg.packing.max_seq_len


def lora_input_units(arch: Arch, cfg: TrainConfig) -> int:
    """Units of LoRA input saved per token. Without dropout the adapters of q/k/v (and of gate/up) share one input
    tensor, saved once; with dropout each projection saves its own dropped copy."""
    shapes = arch.linears()
    chosen = [n for n in shapes if adapted(cfg, n)] if cfg.lora.enabled else []
    if cfg.lora.dropout > 0:
        return sum(shapes[n][0] for n in chosen)
    groups = (("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",))
    return sum(shapes[g[0]][0] for g in groups if any(n in chosen for n in g))


def layer_activation_bytes(arch: Arch, cfg: TrainConfig, tokens: int, cal: Calibration) -> float:
    """Bytes one decoder layer keeps for backward when it is not checkpointed, for `tokens` tokens.

    Per token: norm x (RMSNorm inputs: 4 x hidden + q_dim + kv_dim on Gemma 3, 2 x hidden on Llama), with norm the
    fused kernels' 2 bytes or transformers' fp32 copy
    + (lora_input_bytes + 1 if dropout) x LoRA input units (`lora_input_units`) + 2 x r per adapted projection
    + attn_bytes x (q after RoPE + k, v (expanded to q_dim by sdpa/eager with a mask) + output)
    + 4 x heads (fp32 log-sum-exp) + mlp x intermediate (Liger: gate and up; transformers: + the activation).
    eager attention adds eager_score_bytes x heads x seq_len (the probabilities: the seq^2 term).
    On the fused path this counts 114,944 bytes per token for Gemma 3 4B; the H100 measured 112,325 (the peak
    without checkpointing less the one with every layer, per layer and token).
    """
    path = kernel_path(cfg, arch)
    h, i = arch.hidden, arch.intermediate
    norm_units = 4 * h + arch.q_dim + arch.kv_dim if arch.gemma else 2 * h
    lora_b = cal.lora_input_bytes + (1.0 if cfg.lora.dropout > 0 else 0.0)
    n_adapted = sum(adapted(cfg, n) for n in arch.linears()) if cfg.lora.enabled else 0
    impl = cfg.model.attn_implementation
    kv_saved = arch.q_dim if path.kv_expanded else arch.kv_dim
    per_token = (
        (cal.fused_norm_bytes if path.fused_norm else cal.norm_bytes) * norm_units
        + lora_b * lora_input_units(arch, cfg)
        + 2 * cfg.lora.r * n_adapted
        + cal.attn_bytes * (2 * arch.q_dim + 2 * kv_saved)
        + 4 * arch.heads
        + (cal.fused_mlp_bytes if path.fused_mlp else cal.mlp_bytes) * i
    )
    eager = cfg.packing.attention == "eager" if cfg.packing.mode == "packed" else impl == "eager"
    if eager:
        per_token += cal.eager_score_bytes * arch.heads * seq_len(cfg)
    return per_token * tokens * cal.scale


def activation_bytes(arch: Arch, cfg: TrainConfig, cal: Calibration) -> dict[str, float]:
    """Stored activations of a micro-batch, the recomputed layer and the backward working set.

    Checkpointed layers (`TrainerConfig.checkpointed_layers`) keep only their bf16 input (2 x hidden per token);
    the others keep everything (`layer_activation_bytes`). Backward starts at the last layer: a recomputed last
    layer holds a whole layer more at that moment ("recompute"); when the last layer is stored, the layers that
    are recomputed later find it freed, so nothing is added. Working set: (work_hidden_bytes x hidden +
    work_intermediate_bytes x intermediate) per token, times the path's fitted scale. Dense document masks (packed
    rows with sdpa/eager) add rows x seq^2 bytes per layer type. trainer.offload_activations=true keeps the stored
    part in pinned CPU memory (training/offload.py): on the GPU only the input in use and the prefetched one; the
    recomputed layer and the working set stay.
    """
    seq = seq_len(cfg)
    tokens = cfg.trainer.micro_batch_size * seq
    ckpt = cfg.trainer.checkpointed_layers(arch.layers)
    full = layer_activation_bytes(arch, cfg, tokens, cal)
    stored = len(ckpt) * 2 * arch.hidden * tokens + (arch.layers - len(ckpt)) * full
    if cfg.trainer.offload_activations is True:  # on the CPU; in backward one layer's input and the prefetched one
        stored = 2 * 2 * arch.hidden * tokens
    path = kernel_path(cfg, arch)
    scale = cal.fused_work_scale if path.fused_norm and path.fused_mlp else cal.work_scale
    if not cfg.lora.fused:
        scale = cal.peft_work_scale
    work = (cal.work_hidden_bytes * arch.hidden + cal.work_intermediate_bytes * arch.intermediate) * tokens * scale
    masks = 0.0
    if cfg.packing.mode == "packed" and path.kv_expanded:
        mask_b = 1 if cfg.packing.attention == "sdpa" else DTYPE_BYTES[cfg.model.dtype]
        masks = (2 if arch.gemma else 1) * cfg.trainer.micro_batch_size * seq * seq * mask_b
    recompute = full if arch.layers - 1 in ckpt else 0.0
    return {"stored": stored, "recompute": recompute, "work": work * cal.scale, "masks": masks}


def label_tokens(cfg: TrainConfig, label_tokens_per_row: float | None) -> float:
    """Label tokens of one micro-batch: rows x label_tokens_per_row, capped at its tokens; None = every token."""
    tokens = cfg.trainer.micro_batch_size * seq_len(cfg)
    if label_tokens_per_row is None:
        return float(tokens)
    if label_tokens_per_row < 0:
        raise ValueError(f"label_tokens_per_row={label_tokens_per_row} must be >= 0 (or None for the worst case).")
    return min(float(tokens), cfg.trainer.micro_batch_size * label_tokens_per_row)


def loss_bytes(arch: Arch, cfg: TrainConfig, cal: Calibration, label_tokens_per_row: float | None = None) -> float:
    """The chunked loss at its peak: chunk x vocab logits, chunk = min(loss_chunk_size, label tokens of the
    micro-batch), since the chunked loss sends only label tokens to the output projection; plus the gathered label
    rows and their gradient (label tokens x hidden x dtype bytes each), plus the last hidden state and the final
    norm's fp32 input and bf16 output (tokens x hidden x (dtype + 6) B). The logits: with trainer.loss_kernel=torch
    logits_fp32_copies fp32 buffers; with the Triton kernel (auto picks it on a CUDA GPU, which this estimate is for)
    one buffer in the model's dtype, the gradient written over it (H200, Gemma 3 4B, 4 x 2048 rows: 5.48 GiB peak
    against 7.49 with torch's ops, experiments/results/efficiency_h200/h_session9/).

    label_tokens_per_row=None is the worst case (loss on every token). For a peak, give the largest micro-batch's.
    """
    tokens = cfg.trainer.micro_batch_size * seq_len(cfg)
    labels = label_tokens(cfg, label_tokens_per_row)
    chunk = min(cfg.trainer.loss_chunk_size, labels)
    dtype_b = DTYPE_BYTES[cfg.model.dtype]
    logit_b = cal.logits_fp32_copies * 4 if cfg.trainer.loss_kernel == "torch" else dtype_b
    return logit_b * chunk * arch.vocab + arch.hidden * (2 * dtype_b * labels + (dtype_b + 6) * tokens)
