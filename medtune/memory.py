"""Predict the peak GPU memory of one training rank from the config alone, before anything is loaded.

    python -m medtune.memory model=medgemma_4b model.init=random quantization=nf4 packing=packed
    python -m medtune.memory model=llama3_3_70b quantization=nf4 sharding=fsdp world_size=8 trainer.micro_batch_size=2
    python -m medtune.memory ... --json          # the breakdown as JSON

`world_size=N` is read before Hydra composes conf/train.yaml (default: $WORLD_SIZE or 1); every other argument is a
Hydra override. Nothing here imports torch: the architecture comes from medtune/archs/<arch>.json.

The peak of a step is the larger of two moments (everything in bytes, T = micro_batch_size x max_seq_len tokens):
- the loss, at the end of the forward: static + stored activations + the final norm + one logits chunk;
- the start of the backward: static + LoRA gradients + stored activations + one recomputed layer + working set.
static = frozen weights + buffers + LoRA params + optimizer state. The arithmetic of each part is in the docstring
of the function that computes it (`weight_bytes`, `lora_param_count`, `activation_bytes`, `loss_bytes`), and the
few numbers that only a GPU can calibrate are the fields of `Calibration`.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medtune.config import TrainConfig

ARCHS = Path(__file__).resolve().parent / "archs"
CONF = Path(__file__).resolve().parents[1] / "conf"
GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NF4_BLOCK = 64  # bitsandbytes 4-bit blocksize: one absmax per 64 weights
NF4_BLOCK2 = 256  # double quantisation: the absmax values are themselves quantised in blocks of 256
NF4_CODE_BYTES = 16 * 4  # the 16-entry fp32 NF4 lookup table, one per quantised weight
DQ_CODE_BYTES = 256 * 4 + 4  # double quant: 256-entry fp32 dynamic map + fp32 offset, one per quantised weight
OPTIMIZER_STATES = {"AdamW": 2, "Adam": 2, "SGD": 0, "Adafactor": 1}  # fp32 state tensors per trainable param
# The Gemma 3 270M shape (config.json of google/gemma-3-270m), for model=gemma3_270m, which has no arch file.
GEMMA3_270M = {
    "model_type": "gemma3_text",
    "vocab_size": 262144,
    "hidden_size": 640,
    "intermediate_size": 2048,
    "num_hidden_layers": 18,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "tie_word_embeddings": True,
}


@dataclass(frozen=True)
class Calibration:
    """Numbers the GPU measurements calibrate (bytes per token per unit of width unless said otherwise)."""

    norm_bytes: float = 4.0  # RMSNorm keeps an fp32 copy of its input for backward
    lora_input_bytes: float = 2.0  # bf16 copy of a LoRA input saved by lora_A (+1 for the dropout mask if p > 0)
    mlp_bytes: float = 6.0  # gate out (act input), act out and up out, bf16 each: 3 x 2 bytes per intermediate unit
    attn_bytes: float = 2.0  # q, k, v after RoPE and the attention output, bf16
    eager_score_bytes: float = 6.0  # eager: fp32 softmax probs + their bf16 copy, per head per (query, key) pair
    work_hidden_bytes: float = 16.0  # backward working set per hidden unit (gradient of the residual stream, fp32)
    work_intermediate_bytes: float = 8.0  # backward working set per intermediate unit (grads of gate/up, bf16)
    logits_fp32_copies: float = 3.0  # logits chunk alive at once: fp32 logits + logsumexp temporaries / softmax
    fsdp_gathered_layers: float = 2.0  # FSDP2 holds the current and the prefetched layer unsharded
    fixed_bytes: int = 32 * 1024**2  # cuBLAS workspace and small allocations
    scale: float = 1.0  # multiplies the activation terms (one-number calibration)


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


def _arch_spec(cfg: TrainConfig) -> dict[str, Any]:
    m = cfg.model
    if m.arch:
        path = Path(m.arch) if m.arch.endswith(".json") else ARCHS / f"{m.arch}.json"
        if not path.is_file():
            raise ValueError(f"model.arch={m.arch}: no {path}; name a file in {ARCHS} or a config.json path.")
        spec = json.loads(path.read_text())
    elif m.source == "gguf":
        spec = dict(GEMMA3_270M)
    elif m.path and (Path(m.path) / "config.json").is_file():
        spec = json.loads((Path(m.path) / "config.json").read_text())
    else:
        raise ValueError(f"model={m.name}: set model.arch (a file in {ARCHS}) so its shape is known without loading.")
    return spec.get("text_config", spec) if spec.get("model_type") == "gemma3" else spec


def load_arch(cfg: TrainConfig) -> Arch:
    """The model's shape from medtune/archs/<arch>.json (or the Gemma 3 270M shape), depth from model.num_layers."""
    s = _arch_spec(cfg)
    model_type = s.get("model_type", "gemma3_text")
    if not (model_type.startswith("gemma3") or model_type in ("llama", "mistral")):
        raise ValueError(f"model={cfg.model.name}: model_type {model_type} is not modelled (gemma3, llama, mistral).")
    heads = s["num_attention_heads"]
    return Arch(
        model_type=model_type,
        vocab=s["vocab_size"],
        hidden=s["hidden_size"],
        intermediate=s["intermediate_size"],
        layers=cfg.model.num_layers or s["num_hidden_layers"],
        heads=heads,
        kv_heads=s.get("num_key_value_heads", heads),
        head_dim=s.get("head_dim") or s["hidden_size"] // heads,
        tied=bool(s.get("tie_word_embeddings", False)),
    )


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


def lora_param_count(arch: Arch, cfg: TrainConfig) -> int:
    """LoRA parameters: r x (in + out) per adapted projection (+ out for DoRA's magnitude), over all layers.

    'all-linear' adapts the 7 projections of every layer and never lm_head (peft excludes the output layer).
    """
    lc = cfg.lora
    if not lc.enabled:
        return 0
    targets = list(lc.target_modules)
    shapes = arch.linears()
    if targets == ["all-linear"]:
        chosen = list(shapes)
    else:
        unknown = [t for t in targets if t.rsplit(".", 1)[-1] not in shapes]
        if unknown:
            raise ValueError(f"lora.target_modules names {unknown}, not among the projections {list(shapes)}.")
        chosen = [name for name in shapes if any(t.rsplit(".", 1)[-1] == name for t in targets)]
    per_layer = sum(lc.r * (shapes[n][0] + shapes[n][1]) + (shapes[n][1] if lc.use_dora else 0) for n in chosen)
    return arch.layers * per_layer


def _optimizer_states(cfg: TrainConfig) -> int:
    name = cfg.optim._target_.rsplit(".", 1)[-1]
    if name not in OPTIMIZER_STATES:
        raise ValueError(f"optim._target_={cfg.optim._target_}: unknown state size; add it to OPTIMIZER_STATES.")
    return OPTIMIZER_STATES[name]


def layer_activation_bytes(arch: Arch, cfg: TrainConfig, tokens: int, cal: Calibration) -> float:
    """Bytes one decoder layer keeps for backward when it is not checkpointed, for `tokens` tokens.

    Per token: norm_bytes x (RMSNorm inputs: 4 x hidden + q_dim + kv_dim on Gemma 3, 2 x hidden on Llama)
    + (lora_input_bytes + 1 if dropout) x (sum of adapted projections' in_features) + 2 x r per adapted projection
    + attn_bytes x (q after RoPE + k, v (expanded to q_dim by sdpa with a mask; kv_dim with flex/flash) + output)
    + 4 x heads (fp32 log-sum-exp) + mlp_bytes x intermediate.
    eager attention adds eager_score_bytes x heads x seq_len (the probabilities: the seq^2 term).
    """
    h, i = arch.hidden, arch.intermediate
    norm_units = 4 * h + arch.q_dim + arch.kv_dim if arch.gemma else 2 * h
    lora_b = cal.lora_input_bytes + (1.0 if cfg.lora.dropout > 0 else 0.0)
    shapes = arch.linears()
    adapted = [n for n in shapes if _adapted(cfg, n)] if cfg.lora.enabled else []
    lora_units = sum(shapes[n][0] for n in adapted)
    impl = cfg.model.attn_implementation
    kv_saved = arch.kv_dim if impl in ("flex_attention", "flash_attention_2") else arch.q_dim
    per_token = (
        cal.norm_bytes * norm_units
        + lora_b * lora_units
        + 2 * cfg.lora.r * len(adapted)
        + cal.attn_bytes * (2 * arch.q_dim + 2 * kv_saved)
        + 4 * arch.heads
        + cal.mlp_bytes * i
    )
    if impl == "eager":
        per_token += cal.eager_score_bytes * arch.heads * _seq_len(cfg)
    return per_token * tokens * cal.scale


def _adapted(cfg: TrainConfig, name: str) -> bool:
    targets = list(cfg.lora.target_modules)
    return targets == ["all-linear"] or any(t.rsplit(".", 1)[-1] == name for t in targets)


def _seq_len(cfg: TrainConfig) -> int:
    if not cfg.packing.max_seq_len:
        raise ValueError("packing.max_seq_len is empty (packing=none): set it to the longest row you expect.")
    return cfg.packing.max_seq_len


def activation_bytes(arch: Arch, cfg: TrainConfig, cal: Calibration) -> dict[str, float]:
    """Stored activations of a micro-batch, the recomputed layer and the backward working set.

    With grad_ckpt_every=k, layers 0, k, 2k, ... are checkpointed: they keep only their bf16 input (2 x hidden per
    token) and one of them at a time is recomputed in backward (one full layer); the other layers keep everything
    (`layer_activation_bytes`). Working set: (work_hidden_bytes x hidden + work_intermediate_bytes x intermediate)
    per token. Dense document masks (packed rows with sdpa/eager) add rows x seq^2 bytes per layer type.
    """
    seq = _seq_len(cfg)
    tokens = cfg.trainer.micro_batch_size * seq
    k = cfg.trainer.grad_ckpt_every
    n_ckpt = len(range(0, arch.layers, k)) if k > 0 else 0
    full = layer_activation_bytes(arch, cfg, tokens, cal)
    stored = n_ckpt * 2 * arch.hidden * tokens + (arch.layers - n_ckpt) * full
    work = (cal.work_hidden_bytes * arch.hidden + cal.work_intermediate_bytes * arch.intermediate) * tokens
    masks = 0.0
    if cfg.packing.mode == "packed" and cfg.model.attn_implementation in ("sdpa", "eager"):
        mask_b = 1 if cfg.model.attn_implementation == "sdpa" else DTYPE_BYTES[cfg.model.dtype]
        masks = (2 if arch.gemma else 1) * cfg.trainer.micro_batch_size * seq * seq * mask_b
    return {"stored": stored, "recompute": full if n_ckpt else 0.0, "work": work * cal.scale, "masks": masks}


def loss_bytes(arch: Arch, cfg: TrainConfig, cal: Calibration) -> float:
    """The chunked loss at its peak: logits_fp32_copies x chunk x vocab x 4 B, plus the label rows and their
    gradient (tokens x hidden x 2 B each), plus the final norm's fp32 input and output (tokens x hidden x 6 B).

    Worst case: every token carries a label (loss_on=all), so a chunk is full.
    """
    tokens = cfg.trainer.micro_batch_size * _seq_len(cfg)
    chunk = min(cfg.trainer.loss_chunk_size, tokens)
    dtype_b = DTYPE_BYTES[cfg.model.dtype]
    return cal.logits_fp32_copies * chunk * arch.vocab * 4 + tokens * arch.hidden * (2 * dtype_b + 6)


@dataclass
class MemoryEstimate:
    """Predicted bytes per rank, by part; `peak_bytes` is the predicted torch.cuda.max_memory_allocated."""

    parts: dict[str, float] = field(default_factory=dict)
    peak_bytes: float = 0.0
    load_peak_bytes: float = 0.0
    world_size: int = 1

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GIB

    def table(self) -> str:
        """The breakdown as aligned text lines in GiB."""
        rows = [f"  {name:<22} {value / GIB:9.3f} GiB" for name, value in self.parts.items()]
        rows.append(f"  {'load peak':<22} {self.load_peak_bytes / GIB:9.3f} GiB")
        rows.append(f"  {'train peak (per rank)':<22} {self.peak_gib:9.3f} GiB  (world size {self.world_size})")
        return "\n".join(rows)


def estimate(cfg: TrainConfig, world_size: int = 1, cal: Calibration | None = None) -> MemoryEstimate:
    """Peak GPU bytes per rank of a training step configured by `cfg` (see the module docstring)."""
    cal = cal or Calibration()
    arch = load_arch(cfg)
    shard = world_size if cfg.sharding.strategy == "fsdp" else 1
    w = weight_bytes(arch, cfg)
    n_lora = lora_param_count(arch, cfg)
    parts: dict[str, float] = {
        "weights/layers": w["layers"] / shard,
        "weights/embed_head": w["embed_head"] / shard,
        "weights/buffers": w["buffers"],
        "lora/params": 4 * n_lora / shard,
        "lora/grads": 4 * n_lora / shard,
        "optimizer/states": 4 * _optimizer_states(cfg) * n_lora / shard,
    }
    if shard > 1:  # the root unit (embeddings, tied head) stays gathered for the loss; plus in-flight layers
        per_layer = w["layers"] / arch.layers
        parts["fsdp/gathered"] = w["embed_head"] * (1 - 1 / shard) + cal.fsdp_gathered_layers * per_layer
    act = activation_bytes(arch, cfg, cal)
    parts.update({f"activations/{k}": v for k, v in act.items()})
    parts["loss/chunk"] = loss_bytes(arch, cfg, cal)
    parts["fixed"] = cal.fixed_bytes
    static = sum(v for k, v in parts.items() if k.split("/")[0] in ("weights", "fsdp", "fixed"))
    static += parts["lora/params"] + parts["optimizer/states"] + act["stored"] + act["masks"]
    forward_peak = static + parts["loss/chunk"]
    backward_peak = static + parts["lora/grads"] + act["recompute"] + act["work"]
    load = sum(parts[k] for k in ("weights/layers", "weights/embed_head", "weights/buffers", "lora/params"))
    if cfg.quantization.method != "none":  # random-init quantisation materialises one layer in model.dtype first
        load += sum(a * b for a, b in arch.linears().values()) * DTYPE_BYTES[cfg.model.dtype]
    return MemoryEstimate(parts, max(forward_peak, backward_peak), load, world_size)


def compose(overrides: list[str]) -> TrainConfig:
    """conf/train.yaml composed with Hydra overrides and checked (the same config medtune.train would run)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from medtune.config import register_configs, to_train_config

    register_configs()
    os.environ.setdefault("MEDTUNE_RUN_STAMP", "memory")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return to_train_config(hydra_compose(config_name="train", overrides=overrides))


def main(argv: list[str] | None = None) -> None:
    """CLI: print the per-rank breakdown of a composed config (`world_size=N` and `--json` are ours)."""
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    overrides = []
    for arg in args:
        if arg.startswith("world_size="):
            world_size = int(arg.split("=", 1)[1])
        elif arg != "--json":
            overrides.append(arg)
    cfg = compose(overrides)
    est = estimate(cfg, world_size)
    if as_json:
        print(
            json.dumps(
                {
                    "parts": est.parts,
                    "peak_gib": est.peak_gib,
                    "load_peak_gib": est.load_peak_bytes / GIB,
                    "world_size": world_size,
                    "calibration": asdict(Calibration()),
                },
                indent=2,
            )
        )
        return
    q, p = cfg.quantization.method, cfg.packing
    print(
        f"{cfg.model.name}: quantization={q} packing={p.mode} rows={cfg.trainer.micro_batch_size}x{p.max_seq_len} "
        f"sharding={cfg.sharding.strategy} grad_ckpt_every={cfg.trainer.grad_ckpt_every}"
    )
    print(est.table())


if __name__ == "__main__":
    main()
