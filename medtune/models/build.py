"""Build the frozen base model and its tokenizer from the `model` and `quantization` config groups.

    model, tokenizer = build_model(cfg.model, cfg.quantization, torch.device("cuda"))
    python -m medtune.models convert      # convert Gemma 3 270M from its GGUF once, print where it went

Sources: `gguf` (converted once into `model.cache_dir`, see medtune/models/gguf.py), `hf` (hub id or local
directory; for a Gemma 3 multimodal checkpoint such as medgemma-4b-it only the text model is loaded), `builtin`
(an architecture in models/archs). `model.init=random` builds the architecture on the meta device and fills it one
module at a time with weights seeded per module name (models/materialize.py: the same weights however the model is
split); with nf4/int8 each decoder layer is quantised before the next is created, so peak memory is the quantised
model plus one bf16 layer (a 70B-wide model never exists in bf16). `build_skeleton` is the meta model alone, which
FSDP training fills and shards one layer at a time (training/sharded_load.py).
The base is returned frozen and in its storage dtype: nothing is upcast to fp32 (no prepare_model_for_kbit_training).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Gemma3ForCausalLM, PretrainedConfig

from medtune.config import ModelConfig, QuantizationConfig
from medtune.models.anatomy import decoder_layers
from medtune.models.arch_spec import ArchNotFoundError, read_arch_spec
from medtune.models.byte_tokenizer import build_byte_tokenizer
from medtune.models.gguf import ensure_converted
from medtune.models.identity import base_identity
from medtune.models.materialize import Materializer, SafetensorsReader, split_modules
from medtune.models.precision import TORCH_DTYPES
from medtune.models.quantize import bnb_config, quantize_linears_, quantize_skeleton_

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model cannot be loaded as configured; the message names the config key and the fix."""


def arch_config(arch: str, num_layers: int | None = None) -> PretrainedConfig:
    """A transformers config from models/archs/<arch>.json or a path to a config.json, depth optionally reduced."""
    try:
        spec = read_arch_spec(arch)
    except ArchNotFoundError as err:
        raise ModelLoadError(str(err)) from None
    spec = {k: v for k, v in spec.items() if k not in ("architectures", "transformers_version", "torch_dtype")}
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    return with_depth(config, num_layers)


def with_depth(config: PretrainedConfig, num_layers: int | None) -> PretrainedConfig:
    """Keep the width, keep only the first num_layers decoder layers (and their layer types)."""
    if num_layers is None:
        return config
    if num_layers > config.num_hidden_layers:
        raise ModelLoadError(f"model.num_layers={num_layers} exceeds the architecture's {config.num_hidden_layers}.")
    config.num_hidden_layers = num_layers
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:num_layers]
    return config


def _hf_source(path: str) -> tuple[PretrainedConfig, type, dict | None]:
    """Config, model class and key mapping for a hub id or local directory; errors say how to fix the path."""
    local = Path(path).expanduser()
    if path.startswith(("/", ".", "~")) and not local.is_dir():
        raise ModelLoadError(
            f"model.path={path} does not exist; set model.path to a directory holding config.json and *.safetensors "
            "(copied from a machine with hub access), or to a hub id."
        )
    try:
        config = AutoConfig.from_pretrained(str(local) if local.is_dir() else path)
    except OSError as err:
        raise ModelLoadError(
            f"model.path={path}: cannot read its config ({err.__class__.__name__}). If this machine cannot reach "
            "the Hugging Face hub, download the checkpoint elsewhere (`hf download <id> --local-dir DIR`), copy it "
            "here and set model.path=DIR (and HF_HUB_OFFLINE=1); or use model.init=random to build the "
            "architecture without weights."
        ) from err
    if config.model_type == "gemma3":  # multimodal Gemma 3 (e.g. medgemma-4b-it): its text model only
        return config.text_config, _Gemma3TextOnly, GEMMA3_TEXT_KEYS
    return config, AutoModelForCausalLM, None


class _Gemma3TextOnly(Gemma3ForCausalLM):
    """Gemma3ForCausalLM that loads a multimodal checkpoint's text weights and ignores the vision tower."""

    _keys_to_ignore_on_load_unexpected: ClassVar[list[str]] = [
        r"^(model\.)?vision_tower",
        r"^(model\.)?multi_modal_projector",
    ]


# medgemma-4b-it stores `language_model.model.*`, transformers 5 may write `model.language_model.*`: both -> `model.*`
GEMMA3_TEXT_KEYS = {
    r"^language_model\.model\.": "model.",
    r"^model\.language_model\.": "model.",
    r"^language_model\.lm_head\.": "lm_head.",
}


def _load_pretrained(
    source: str, model_cfg: ModelConfig, quant_cfg: QuantizationConfig, device: torch.device
) -> nn.Module:
    config, model_cls, key_mapping = _hf_source(source)
    config = with_depth(config, model_cfg.num_layers)
    kwargs = {"key_mapping": key_mapping} if key_mapping else {}
    quantization = bnb_config(quant_cfg)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    return model_cls.from_pretrained(
        source,
        config=config,
        dtype=TORCH_DTYPES[model_cfg.dtype],
        attn_implementation=model_cfg.attn_implementation,
        device_map={"": device},
        **kwargs,
    )


def base_config(model_cfg: ModelConfig) -> PretrainedConfig:
    """The base's transformers config as build_model builds it, without weights: the architecture file for random
    weights, else the checkpoint's (a multimodal Gemma 3's text config), cut to model.num_layers."""
    if model_cfg.arch and model_cfg.init == "random":
        return arch_config(model_cfg.arch, model_cfg.num_layers)
    if model_cfg.source == "gguf":
        folder = ensure_converted(model_cfg.name, model_cfg.cache_dir, model_cfg.path)
        return with_depth(AutoConfig.from_pretrained(folder), model_cfg.num_layers)
    return with_depth(_hf_source(model_cfg.path)[0], model_cfg.num_layers)


def _build_random(model_cfg: ModelConfig, quant_cfg: QuantizationConfig, device: torch.device) -> nn.Module:
    """Random weights, seeded per module (models/materialize.py); quantised layer by layer when quantization is on
    (never the whole model in bf16)."""
    config = base_config(model_cfg)
    kwargs = {"dtype": TORCH_DTYPES[model_cfg.dtype], "attn_implementation": model_cfg.attn_implementation}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    fill = Materializer(model, device, torch.initial_seed())
    outside, layers_name = split_modules(model)
    for name, module in outside:  # embeddings, final norm, rotary buffers, lm_head: kept unquantised
        fill.module_(name, module)
    for index, layer in enumerate(decoder_layers(model)):
        for name, module in layer.named_modules(prefix=f"{layers_name}.{index}"):
            fill.module_(name, module)
        if quant_cfg.method != "none":
            quantize_linears_(layer, quant_cfg, device)
    _mark_quantized(model, quant_cfg)
    return model


def _mark_quantized(model: nn.Module, quant_cfg: QuantizationConfig) -> None:
    """The flag transformers sets on a quantised model (peft reads it to attach its bitsandbytes adapters)."""
    if quant_cfg.method != "none":
        setattr(model, "is_loaded_in_4bit" if quant_cfg.method == "nf4" else "is_loaded_in_8bit", True)


def build_skeleton(model_cfg: ModelConfig, quant_cfg: QuantizationConfig) -> tuple[nn.Module, SafetensorsReader | None]:
    """The base on the meta device (its decoder linears as empty bitsandbytes layers when quantised) and the reader
    of its local checkpoint (None for model.init=random): training/sharded_load.py fills it one layer at a time."""
    kwargs = {"dtype": TORCH_DTYPES[model_cfg.dtype], "attn_implementation": model_cfg.attn_implementation}
    reader, model_cls = None, AutoModelForCausalLM
    if model_cfg.init == "random":
        config = base_config(model_cfg)
    else:
        folder = model_cfg.path
        if model_cfg.source == "gguf":
            folder = str(ensure_converted(model_cfg.name, model_cfg.cache_dir, model_cfg.path))
        if not Path(folder).expanduser().is_dir():
            raise ModelLoadError(
                f"model.path={folder} is not a local directory; sharding.load=per_layer reads the safetensors of a "
                "local checkpoint: download it (`hf download <id> --local-dir DIR`) and set model.path=DIR, or set "
                "sharding.load=whole."
            )
        config, model_cls, key_mapping = _hf_source(str(Path(folder).expanduser()))
        config = with_depth(config, model_cfg.num_layers)
        reader = SafetensorsReader(Path(folder).expanduser(), key_mapping)
    make = AutoModelForCausalLM.from_config if model_cls is AutoModelForCausalLM else model_cls._from_config
    with torch.device("meta"):
        model = make(config, **kwargs)
    if quant_cfg.method != "none":
        quantize_skeleton_(decoder_layers(model), quant_cfg)
    _mark_quantized(model, quant_cfg)
    return model, reader


def load_tokenizer(model_cfg: ModelConfig, config: PretrainedConfig, source: str | None = None):
    """The tokenizer named by model.tokenizer, else the checkpoint's; a byte tokenizer for random builtin models."""
    name = model_cfg.tokenizer or source or (model_cfg.path if model_cfg.source == "hf" else None)
    if model_cfg.init == "random" and not model_cfg.tokenizer and not (name and Path(name).expanduser().is_dir()):
        # Random weights need no particular vocabulary; do not wait on an unreachable hub for one.
        log.info("model.init=random: byte-level tokenizer (set model.tokenizer for realistic token counts)")
        name = None
    if name == "gemma3_270m":
        name = str(ensure_converted("gemma3_270m", model_cfg.cache_dir))
    if name is None or name == "bytes":
        return _byte_tokenizer(config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as err:
        if model_cfg.init != "random":
            raise ModelLoadError(
                f"no tokenizer at {name} ({err}); set model.tokenizer to a tokenizer directory."
            ) from err
        log.warning("no tokenizer at %s; using a byte-level tokenizer (random weights: only lengths matter)", name)
        return _byte_tokenizer(config)
    if len(tokenizer) > config.vocab_size:
        raise ModelLoadError(
            f"the tokenizer from {name} has {len(tokenizer)} tokens but the model only {config.vocab_size}; "
            "set model.tokenizer to one that matches the architecture (or model.tokenizer=bytes)."
        )
    if tokenizer.pad_token is None:  # e.g. Llama 3: pad positions never reach the loss (labels -100)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _byte_tokenizer(config: PretrainedConfig):
    eos = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    return build_byte_tokenizer(config.vocab_size, config.pad_token_id, config.bos_token_id, eos)


def build_tokenizer(model_cfg: ModelConfig):
    """The tokenizer build_model returns, without the weights: the data is mixed before the model loads."""
    if model_cfg.init == "random":
        return load_tokenizer(model_cfg, base_config(model_cfg))
    source = model_cfg.path
    if model_cfg.source == "gguf":
        source = str(ensure_converted(model_cfg.name, model_cfg.cache_dir, model_cfg.path))
    return load_tokenizer(model_cfg, base_config(model_cfg), source)


def finish_base_(model: nn.Module, model_cfg: ModelConfig, quantization: str) -> None:
    """What every built base carries: no decoding cache, its config and identity (its input embedding filled)."""
    model.config.use_cache = False  # training never decodes; the cache would only cost memory
    model.medtune_model_cfg = model_cfg  # read by adapters.merge_and_save to rebuild the base
    model.medtune_base_identity = base_identity(model, quantization)  # saved beside every adapter of this base


def build_model(
    model_cfg: ModelConfig, quant_cfg: QuantizationConfig, device: torch.device
) -> tuple[nn.Module, object]:
    """The frozen base model (quantised as configured, on `device`) and its tokenizer."""
    start_s = time.perf_counter()
    source = None
    if model_cfg.init == "random":
        model = _build_random(model_cfg, quant_cfg, device)
    else:
        source = model_cfg.path
        if model_cfg.source == "gguf":
            source = str(ensure_converted(model_cfg.name, model_cfg.cache_dir, model_cfg.path))
        model = _load_pretrained(source, model_cfg, quant_cfg, device)
    tokenizer = load_tokenizer(model_cfg, model.config, source)
    model.requires_grad_(False)
    finish_base_(model, model_cfg, quant_cfg.method)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "built %s (%s, init=%s, quantization=%s, %d layers, %.1fM stored params) on %s in %.1f s",
        model_cfg.name,
        model_cfg.source,
        model_cfg.init,
        quant_cfg.method,
        model.config.num_hidden_layers,
        n_params / 1e6,
        device,
        time.perf_counter() - start_s,
    )
    return model.eval(), tokenizer
