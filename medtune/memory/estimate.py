"""Predict the peak GPU memory of one training rank from the config alone, before anything is loaded.

    python -m medtune.memory model=medgemma_4b model.init=random quantization=nf4 packing=packed
    python -m medtune.memory model=llama3_3_70b quantization=nf4 sharding=fsdp world_size=8 trainer.micro_batch_size=2
    python -m medtune.memory ... --json          # the breakdown as JSON

    python -m medtune.memory ... packing=packed label_tokens_per_row=873   # loss on 873 label tokens per row

`world_size=N` (default: $WORLD_SIZE or 1) and `label_tokens_per_row=N` (default: every token carries a label, the
worst case) are read before Hydra composes conf/train.yaml; every other argument is a Hydra override. Nothing here
imports torch: the architecture comes from medtune/models/archs/<arch>.json.

The peak of a step is the larger of two moments (everything in bytes, T = micro_batch_size x max_seq_len tokens):
- the loss, at the end of the forward: static + stored activations + autocast's bf16 adapter copies + the final
  norm + one logits chunk of min(loss_chunk_size, label tokens of the micro-batch) rows;
- the backward: static + stored activations and LoRA gradients (at their larger end) + one recomputed layer +
  working set.
static = frozen weights + buffers + LoRA params + optimizer state. The arithmetic of each part is in the docstring
of the function that computes it (memory/parts.py: `weight_bytes`, `activation_bytes`, `loss_bytes`; here
`lora_param_count`), and the few numbers that only a GPU can calibrate are the fields of `Calibration`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtune.config import TrainConfig, compose
from medtune.files.space import GIB
from medtune.memory.parts import (
    DTYPE_BYTES,
    Arch,
    Calibration,
    activation_bytes,
    label_tokens,
    layer_activation_bytes,
    loss_bytes,
    quant_state_bytes,
    quantized_bytes,
    weight_bytes,
)
from medtune.models.arch_spec import ARCHS_DIR, ArchNotFoundError, read_arch_spec

__all__ = [
    "Arch",
    "Calibration",
    "MemoryEstimate",
    "activation_bytes",
    "compose",
    "estimate",
    "layer_activation_bytes",
    "load_arch",
    "load_units",
    "lora_param_count",
    "loss_bytes",
    "quant_state_bytes",
    "quantized_bytes",
    "weight_bytes",
]

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
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


def _arch_spec(cfg: TrainConfig) -> dict[str, Any]:
    m = cfg.model
    if m.arch:
        try:
            return read_arch_spec(m.arch)
        except ArchNotFoundError as err:
            raise ValueError(str(err)) from None
    if m.source == "gguf":
        return dict(GEMMA3_270M)
    if m.path and (Path(m.path) / "config.json").is_file():
        return read_arch_spec(str(Path(m.path) / "config.json"))
    raise ValueError(f"model={m.name}: set model.arch (a file in {ARCHS_DIR}) so its shape is known without loading.")


def load_arch(cfg: TrainConfig) -> Arch:
    """The model's shape from models/archs/<arch>.json (or the Gemma 3 270M shape), depth from model.num_layers."""
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


@dataclass
class MemoryEstimate:
    """Predicted bytes per rank, by part; `peak_bytes` is the predicted torch.cuda.max_memory_allocated."""

    parts: dict[str, float] = field(default_factory=dict)
    peak_bytes: float = 0.0
    load_peak_bytes: float = 0.0
    heldout_peak_bytes: float = 0.0  # the held-out loss after training (`_heldout_forward`)
    world_size: int = 1
    label_tokens: float = 0.0  # label tokens per micro-batch the loss term was computed for
    label_tokens_per_row: float | None = None  # as given; None = worst case (every token carries a label)

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GIB

    def table(self) -> str:
        """The breakdown as aligned text lines in GiB."""
        rows = [f"  {name:<22} {value / GIB:9.3f} GiB" for name, value in self.parts.items()]
        given = self.label_tokens_per_row
        source = "worst case: every token" if given is None else f"label_tokens_per_row={given:g}"
        rows.append(f"  {'loss label tokens':<22} {self.label_tokens:9.0f} per micro-batch ({source})")
        rows.append(f"  {'load peak':<22} {self.load_peak_bytes / GIB:9.3f} GiB")
        rows.append(f"  {'held-out loss peak':<22} {self.heldout_peak_bytes / GIB:9.3f} GiB")
        rows.append(f"  {'train peak (per rank)':<22} {self.peak_gib:9.3f} GiB  (world size {self.world_size})")
        return "\n".join(rows)


def _load_peak(arch: Arch, cfg: TrainConfig, world_size: int) -> float:
    """The larger of the model build's transient and the built model plus its adapters.

    Whole-model loading (sharding none/ddp, or fsdp with sharding.load=whole): every rank builds the whole model
    before `fully_shard` splits it: on two H200s the load peaks were 38.43 GiB (LLaMA 3.3 70B nf4) and 2.97 (Gemma 3
    4B nf4) per rank, the one-GPU figures. Per-layer loading is `_per_layer_load_peak`.
    """
    if cfg.sharding.strategy == "fsdp" and cfg.sharding.load == "per_layer":
        return _per_layer_load_peak(arch, cfg, world_size)
    weights = sum(weight_bytes(arch, cfg).values())
    transient = 0.0
    if cfg.quantization.method != "none":  # random-init quantisation materialises one layer in model.dtype first
        transient = sum(a * b for a, b in arch.linears().values()) * DTYPE_BYTES[cfg.model.dtype]
    # a tied head is filled once (models/materialize.py; tiny_gemma3 in bf16 on a CPU: 368,066 bytes peak for
    # 363,010 of weights); from_config on the device used to allocate it a second time
    return weights + max(transient, 4 * lora_param_count(arch, cfg))


def _per_layer_load_peak(arch: Arch, cfg: TrainConfig, world_size: int) -> float:
    """sharding.load=per_layer (training/sharded_load.py): the shards loaded so far plus the one unit being filled.

    A decoder layer is filled, its linears quantised one by one (each filled in model.dtype first; two may be
    alive at once), its adapters added, and `fully_shard` keeps 1/N of it; the root's modules (embeddings, final
    norm, head) are filled whole last, before the root is sharded. So: all shards + buffers + the larger of one
    layer (with two linears in model.dtype) and the whole root. With sharding.cpu_offload the shards go to pinned
    CPU memory as each unit is sharded, and only the unit and the layers' quantisation state (`quant_state_bytes`)
    stay on the GPU. Measured on a CPU for tiny models (tests/training/test_sharded_load.py: shard + unit within a
    few KiB); not yet measured on a GPU.
    """
    w = weight_bytes(arch, cfg)
    adapters = DTYPE_BYTES[cfg.lora.dtype] * lora_param_count(arch, cfg)
    shards = (w["layers"] + w["embed_head"] + adapters) / world_size
    if cfg.sharding.cpu_offload:
        shards = quant_state_bytes(arch, cfg)
    return shards + w["buffers"] + max(load_units(arch, cfg))


def load_units(arch: Arch, cfg: TrainConfig) -> tuple[float, float]:
    """(one decoder layer while it is filled: its weights, adapters and two linears in model.dtype; the root unit:
    embeddings, final norm and head) in bytes: per-layer loading holds one of them on top of the shards."""
    w = weight_bytes(arch, cfg)
    adapters = DTYPE_BYTES[cfg.lora.dtype] * lora_param_count(arch, cfg)
    filling = 0.0
    if cfg.quantization.method != "none":
        filling = 2 * max(a * b for a, b in arch.linears().values()) * DTYPE_BYTES[cfg.model.dtype]
    return (w["layers"] + adapters) / arch.layers + filling, float(w["embed_head"])


def _heldout_forward(arch: Arch, cfg: TrainConfig, cal: Calibration, loss: float) -> float:
    """What the held-out loss (a no-grad forward of one micro-batch, after training) adds to the static bytes: the
    residual stream in and out of the layer running, that layer's activations (`layer_activation_bytes`: what it
    would keep for backward, an upper bound of a no-grad layer's transients) and the chunked loss. The gradients are
    gone (zero_grad sets them to None); the optimizer state stays until the eval stage. Composed from the parts
    that the training measurements calibrated; the held-out phase itself is not yet measured on a GPU."""
    tokens = cfg.trainer.micro_batch_size * cfg.packing.max_seq_len
    residual = 2 * DTYPE_BYTES[cfg.model.dtype] * arch.hidden * tokens
    return residual + layer_activation_bytes(arch, cfg, tokens, cal) + loss


def _offload_parts(parts: dict[str, float], arch: Arch, cfg: TrainConfig, cal: Calibration, shard: int) -> None:
    """sharding.cpu_offload (FSDP2's CPUOffloadPolicy, pinned): the shards, the adapters' gradients and the optimizer
    state live in CPU memory (`cpu/offloaded`, not in the GPU peak); the GPU holds the gathered root and the layers in
    flight, now at any world size (each is copied in for its forward and backward), and the layers' quantisation
    state, which is no parameter (`quant_state_bytes`). Not yet measured on a GPU."""
    w, state = weight_bytes(arch, cfg), quant_state_bytes(arch, cfg)
    embed_head, in_flight = w["embed_head"], cal.fsdp_gathered_layers * w["layers"] / arch.layers
    moved = ("weights/layers", "weights/embed_head", "lora/params", "lora/grads", "optimizer/states")
    parts["cpu/offloaded"] = sum(parts[key] for key in moved) - state / shard
    for key in moved:
        parts[key] = 0.0
    parts["weights/layers"] = state
    parts["fsdp/gathered"] = embed_head + in_flight


def estimate(
    cfg: TrainConfig,
    world_size: int = 1,
    cal: Calibration | None = None,
    label_tokens_per_row: float | None = None,
) -> MemoryEstimate:
    """Peak GPU bytes per rank of a training step configured by `cfg` (see the module docstring).

    label_tokens_per_row: label tokens per row of the micro-batch with the most of them (the loss chunk holds
    min(loss_chunk_size, label tokens of the micro-batch) rows); None = worst case, every token carries a label.
    """
    cal = cal or Calibration()
    arch = load_arch(cfg)
    shard = world_size if cfg.sharding.strategy == "fsdp" else 1
    w = weight_bytes(arch, cfg)
    n_lora = lora_param_count(arch, cfg)
    lora_b = DTYPE_BYTES[cfg.lora.dtype]  # the adapters, their gradients and AdamW's states share one dtype
    autocast_cache = cfg.lora.dtype == "float32" and cfg.trainer.autocast_dtype in ("bfloat16", "float16")
    parts: dict[str, float] = {
        "weights/layers": w["layers"] / shard,
        "weights/embed_head": w["embed_head"] / shard,
        "weights/buffers": w["buffers"],
        "lora/params": lora_b * n_lora / shard,
        "lora/grads": lora_b * n_lora / shard,
        "optimizer/states": lora_b * _optimizer_states(cfg) * n_lora / shard,
        # autocast caches a low-precision copy of every fp32 leaf weight it casts until the forward ends
        "lora/autocast_cache": 2 * n_lora if autocast_cache else 0.0,
    }
    if cfg.sharding.strategy == "fsdp":
        # FSDP2 gathers the root unit (embeddings, head) into buffers of its own and keeps them for the loss; with
        # its shard that came to two whole copies per rank at 1 and at 2 ranks alike: on an H100 at world size 1,
        # LLaMA 3.3 70B nf4 (embed + head 3.91 GiB) took +4.07 GiB over sharding=none, Gemma 3 4B (tied, 1.25 GiB)
        # +1.20; on two H200s (2026-11-29) the per-rank peaks were 30.53 GiB (70B) and 7.45 (4B, 4 rows), 1.98 and
        # 0.64 GiB above the shard + one copy this term counted before: half a root each. So gathered + shard = 2
        # copies; at 8 ranks this is an extrapolation. In-flight decoder layers (current + prefetched): from 2 ranks.
        per_layer = w["layers"] / arch.layers
        in_flight = cal.fsdp_gathered_layers * per_layer if shard > 1 else 0.0
        parts["fsdp/gathered"] = w["embed_head"] * (2 - 1 / shard) + in_flight
    if cfg.sharding.strategy == "fsdp" and cfg.sharding.cpu_offload:
        _offload_parts(parts, arch, cfg, cal, shard)
    act = activation_bytes(arch, cfg, cal)
    parts.update({f"activations/{k}": v for k, v in act.items()})
    parts["loss/chunk"] = loss_bytes(arch, cfg, cal, label_tokens_per_row)
    parts["fixed"] = cal.fixed_bytes
    static = sum(v for k, v in parts.items() if k.split("/")[0] in ("weights", "fsdp", "fixed"))
    static += parts["lora/params"] + parts["optimizer/states"] + act["masks"]
    forward_peak = static + act["stored"] + parts["lora/autocast_cache"] + parts["loss/chunk"]
    # Backward walks the layers last to first: each frees its stored input as its adapters' gradients appear, so
    # the stored activations and the gradients peak at opposite ends (first backward layer, last one).
    stored, grads, n = act["stored"], parts["lora/grads"], arch.layers
    backward_peak = static + max(stored + grads / n, stored / n + grads) + act["recompute"] + act["work"]
    return MemoryEstimate(
        parts,
        max(forward_peak, backward_peak),
        _load_peak(arch, cfg, world_size),
        static + _heldout_forward(arch, cfg, cal, parts["loss/chunk"]),
        world_size,
        label_tokens(cfg, label_tokens_per_row),
        label_tokens_per_row,
    )
