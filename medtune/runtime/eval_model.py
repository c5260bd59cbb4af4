"""The model `python -m medtune.evaluate` scores: the base (plus eval.adapter), sharded under sharding=fsdp.

    model, tokenizer = build_eval_model(cfg, dist)

With sharding=fsdp and sharding.load=per_layer (the default) no rank ever holds the whole model: the base is built on
the meta device (models/build.py build_skeleton), the adapter's LoRA modules attached there from its
adapter_config.json, and each decoder layer is filled (base weights as training fills them, then the adapter's
tensors from adapter_model.safetensors, eval/adapter_fill.py) and `fully_shard`-ed before the next, the root's
modules last (runtime/shards.py shard_per_layer; the FSDP root is a ScoringRoot around the (peft) model). The
adapter's checks are the whole path's: a damaged file or another lora.r / target_modules is an AdapterFileError
before any layer is filled, another base a BaseMismatchError (its architecture before the fill, its weights after
it), an inactive adapter an AdapterInactiveError in the evaluation. A DoRA adapter, or one with LoRA modules outside
the decoder layers (e.g. on lm_head), is loaded on the whole path instead, with a log line saying so.
sharding.load=whole, sharding=none and ddp build the whole model on every rank (FSDP then shards it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from medtune.config import TrainConfig
from medtune.eval.adapter_check import check_base, check_base_architecture, load_adapter
from medtune.eval.adapter_fill import AdapterTensors, attach_meta_adapter
from medtune.models.anatomy import causal_lm_of
from medtune.models.build import build_model, build_skeleton, load_tokenizer
from medtune.models.materialize import canonical_name, split_modules
from medtune.runtime.process_group import DistInfo
from medtune.runtime.shards import ScoringRoot, shard_per_layer, shard_whole

log = logging.getLogger(__name__)


def build_eval_model(cfg: TrainConfig, dist: DistInfo) -> tuple[nn.Module, Any]:
    """The (peft) model to score, under sharding=fsdp in its ScoringRoot (filled per layer with load=per_layer, the
    default), and its tokenizer."""
    fsdp = cfg.sharding.strategy == "fsdp"
    if fsdp and cfg.sharding.load == "per_layer":
        built = _per_layer(cfg, dist)
        if built is not None:
            return built
    elif fsdp:
        log.info("sharding.load=whole: every rank builds the whole model, then shards it")
    model, tokenizer = build_model(cfg.model, cfg.quantization, dist.device)
    if cfg.eval.adapter:
        model = load_adapter(model, cfg.eval.adapter, cfg.eval.base_mismatch_ok)
    return (shard_whole(ScoringRoot(model), cfg.sharding, dist) if fsdp else model), tokenizer


def _per_layer(cfg: TrainConfig, dist: DistInfo) -> tuple[nn.Module, Any] | None:
    """The per-layer build; None for an adapter that is not only in the decoder layers (the whole path takes it)."""
    skeleton, reader = build_skeleton(cfg.model, cfg.quantization)
    model, after_layer = skeleton.eval().requires_grad_(False), None
    if cfg.eval.adapter:
        check_base_architecture(skeleton.config, cfg.eval.adapter, cfg.eval.base_mismatch_ok)
        model = attach_meta_adapter(skeleton, cfg.eval.adapter)
        unsupported = _not_per_layer(model)
        if unsupported:
            log.info(
                "sharding.load=per_layer: the adapter %s: it is loaded on the whole path (every rank builds the whole "
                "model, then shards it)",
                unsupported,
            )
            return None
        after_layer = AdapterTensors(cfg.eval.adapter, model).fill_layer_
    root = ScoringRoot(model)
    shard_per_layer(model, root, reader, cfg.model, cfg.quantization, cfg.sharding, dist, after_layer=after_layer)
    if cfg.eval.adapter:
        check_base(model, Path(cfg.eval.adapter), cfg.eval.base_mismatch_ok)
    source = str(reader.folder) if reader is not None else None
    return root, load_tokenizer(cfg.model, causal_lm_of(model).config, source)


def _not_per_layer(model: nn.Module) -> str | None:
    """Why the attached adapter is not filled per layer (DoRA, or LoRA modules outside the decoder layers), or None."""
    if model.peft_config["default"].use_dora:
        return "is a DoRA adapter (its per-layer fill is not tested)"
    _, layers_name = split_modules(causal_lm_of(model))
    names = [canonical_name(n) for n, _ in model.named_parameters() if "lora_" in n]
    outside = [n for n in names if not n.startswith(f"{layers_name}.")]
    return f"has LoRA modules outside the decoder layers ({outside[0]})" if outside else None
