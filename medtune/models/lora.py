"""LoRA/DoRA adapters on the frozen base, gradient checkpointing every k-th layer, and saving the result.

    model = apply_lora(model, cfg.lora, cfg.quantization, grad_ckpt=1)   # or the indices of the layers
    trainable_parameters(model)   # {'trainable': 3.2e6, 'total': 2.7e8, 'percent': 1.2}

Deliberately not used: `peft.prepare_model_for_kbit_training`. It casts every non-quantised weight to fp32, which
cost +20% peak memory and -27% throughput on the Gemma 3 4B architecture (../shared/GPU.md). What QLoRA needs from
it is done here: the base is frozen, and checkpointing is non-reentrant, so the inputs need not require grad.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from medtune.config import LoraConfig, ModelConfig, QuantizationConfig
from medtune.files.atomic import follow_umask
from medtune.models.anatomy import decoder_layers
from medtune.models.fused_lora import fuse_lora_adds
from medtune.models.identity import write_identity
from medtune.models.materialize import kept_rng, seed_adapters_

log = logging.getLogger(__name__)


def _checkpoint_without_graph(function, hidden, *args):
    """Reentrant checkpointing: the layer's first forward runs without autograd (no graph, no saved-tensor hooks:
    less work for the CPU per op) and backward replays it with gradients. Gradients only flow back through an input
    that requires them, which a frozen embedding's output does not: the hidden states are made a leaf that does."""
    if torch.is_tensor(hidden) and hidden.is_floating_point() and not hidden.requires_grad and torch.is_grad_enabled():
        hidden = hidden.detach().requires_grad_(True)
    return checkpoint(function, hidden, *args, use_reentrant=True)


def set_gradient_checkpointing(model: nn.Module, every: int | Sequence[int], reentrant: bool = False) -> list[int]:
    """Recompute every `every`-th decoder layer (0 = none, 1 = all), or the layers of these indices, in backward;
    returns the checkpointed indices.

    `reentrant` (trainer.grad_ckpt_style, without DDP / FSDP): the first forward builds no graph; otherwise torch's
    non-reentrant checkpoint, which keeps working under FSDP2 and DDP hooks and torch.compile."""
    if isinstance(every, int) and every < 0:
        raise ValueError(f"trainer.grad_ckpt_every={every} must be >= 0.")
    wanted = set(every) if not isinstance(every, int) else None
    chosen = []
    # transformers' GradientCheckpointingLayer checkpoints its forward when this flag is set (training mode only);
    # setting it per layer gives every-k-th checkpointing, with FSDP2 hooks kept outside the recomputation.
    ckpt = _checkpoint_without_graph if reentrant else functools.partial(checkpoint, use_reentrant=False)
    for index, layer in enumerate(decoder_layers(model)):
        if not hasattr(layer, "gradient_checkpointing"):
            raise ValueError(f"{type(layer).__name__} does not support gradient checkpointing; set grad_ckpt_every=0.")
        layer._gradient_checkpointing_func = ckpt
        layer.gradient_checkpointing = index in wanted if wanted is not None else every > 0 and index % every == 0
        if layer.gradient_checkpointing:
            chosen.append(index)
    return chosen


def reentrant_checkpointing(style: str, compiled: bool, wrapper: str) -> bool:
    """trainer.grad_ckpt_style resolved: reentrant only for a model no DDP or FSDP2 wraps (sharding.strategy=none:
    their hooks are proven with the non-reentrant one, at any number of ranks; the config refuses `reentrant` with
    them) and not under trainer.compile; auto picks it there."""
    return wrapper == "none" and not compiled and style in ("auto", "reentrant")


def peft_config(lora_cfg: LoraConfig):
    """The peft LoraConfig for a causal LM ('all-linear' = every linear layer but the output projection)."""
    from peft import LoraConfig as PeftLoraConfig

    targets = lora_cfg.target_modules
    target_modules = "all-linear" if list(targets) == ["all-linear"] else list(targets)
    return PeftLoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=target_modules,
        use_dora=lora_cfg.use_dora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def apply_lora(
    model: nn.Module, lora_cfg: LoraConfig, quant_cfg: QuantizationConfig, grad_ckpt: int | Sequence[int],
    reentrant: bool = False,
) -> nn.Module:  # fmt: skip
    """Freeze the base, add LoRA (or DoRA) adapters in fp32, set gradient checkpointing; returns the peft model.

    The adapters' initial weights are drawn from the seed of the run (`torch.initial_seed()`) and each layer's name,
    so a model whose layers are filled one at a time (sharding.load=per_layer) gets the same ones; on a meta model
    they stay meta until models/materialize.py fills their layer."""
    from peft import get_peft_model

    model.requires_grad_(False)
    if quant_cfg.method != "none" and not lora_cfg.enabled:
        raise ValueError(
            f"quantization.method={quant_cfg.method} needs lora.enabled=true: a quantised base cannot train."
        )
    if lora_cfg.enabled:
        # autocast_adapter_dtype keeps the (small) adapter weights in fp32 for stable AdamW updates (lora.dtype);
        # in bf16 they need no casts in the forward, and AdamW then updates bf16 weights.
        config = peft_config(lora_cfg)
        with kept_rng():  # peft's own draws are replaced below by ones seeded per layer name (split-invariant)
            model = get_peft_model(model, config, autocast_adapter_dtype=lora_cfg.dtype == "float32")
        if lora_cfg.dtype == "bfloat16":
            for param in model.parameters():
                if param.requires_grad:
                    param.data = param.data.to(torch.bfloat16)
        seed_adapters_(model, torch.initial_seed(), config.init_lora_weights)
        if lora_cfg.fused:
            fuse_lora_adds(model, lora_cfg.fused_base)
    chosen = set_gradient_checkpointing(model, grad_ckpt, reentrant)
    stats = trainable_parameters(model)
    log.info(
        "adapters: %s trainable of %s params (%.3f%%); gradient checkpointing on %d layers%s",
        f"{stats['trainable']:,}",
        f"{stats['total']:,}",
        stats["percent"],
        len(chosen),
        " (reentrant)" if reentrant and chosen else "",
    )
    return model


def _numel(param: torch.Tensor) -> int:
    """Logical element count (a packed 4-bit parameter stores several weights per element)."""
    shape = getattr(getattr(param, "quant_state", None), "shape", None)
    return int(torch.Size(shape).numel()) if shape is not None else param.numel()


def trainable_parameters(model: nn.Module) -> dict[str, float]:
    """Trainable and total parameter counts (quantised weights counted unpacked) and the trainable percentage."""
    trainable = total = 0
    for param in model.parameters():
        n = _numel(param)
        total += n
        trainable += n if param.requires_grad else 0
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / max(total, 1)}


def save_adapter(model: nn.Module, path: str | Path, state_dict: dict | None = None) -> Path:
    """Save the adapter in peft format (adapter_config.json + adapter_model.safetensors) into `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    kwargs = {"state_dict": state_dict} if state_dict is not None else {}
    model.save_pretrained(path, **kwargs)
    identity = getattr(model, "medtune_base_identity", None)  # set by build_model; peft forwards the attribute
    if identity is not None:
        write_identity(path, identity)
    follow_umask(path)  # safetensors writes 0o600 whatever the umask: a group could not read the adapter
    return path


def _is_quantized(model: nn.Module) -> bool:
    return any(hasattr(p, "quant_state") or p.dtype in (torch.int8, torch.uint8) for p in model.parameters())


def _bf16_base_with_adapter(model: nn.Module, base_cfg: ModelConfig) -> nn.Module:
    """A bf16, unquantised copy of the base on CPU carrying the same adapter weights."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    from medtune.models.build import build_model

    if not _is_quantized(model):
        return copy.deepcopy(model).to("cpu", torch.bfloat16)
    if base_cfg.init == "random":
        raise ValueError(
            "the base has random weights and exists only in quantised form, so no bf16 merged copy can be made; "
            "set trainer.merge_adapter=false (or quantization=none)."
        )
    cfg = copy.copy(base_cfg)
    cfg.dtype = "bfloat16"
    base, _ = build_model(cfg, QuantizationConfig(method="none"), torch.device("cpu"))
    fresh = get_peft_model(base, model.peft_config["default"], autocast_adapter_dtype=False)
    set_peft_model_state_dict(
        fresh, {k: v.to("cpu", torch.bfloat16) for k, v in get_peft_model_state_dict(model).items()}
    )
    return fresh


def merge_and_save(model: nn.Module, path: str | Path, base_cfg: ModelConfig | None = None, tokenizer=None) -> Path:
    """Merge the adapter into a bf16 copy of the base (rebuilt unquantised when needed) and save it to `path`."""
    base_cfg = base_cfg or getattr(model, "medtune_model_cfg", None)
    if base_cfg is None:
        raise ValueError("merge_and_save needs base_cfg (the model config the base was built from).")
    merged = _bf16_base_with_adapter(model, base_cfg).merge_and_unload()
    merged.config.use_cache = True  # the merged copy is for inference
    path = Path(path)
    merged.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    follow_umask(path)
    log.info("merged bf16 model saved to %s", path)
    return path
