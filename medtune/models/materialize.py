"""Weights for a model built on the meta device, filled one module at a time: seeded random init or a checkpoint.

    fill = Materializer(model, device, seed=0)                                  # random weights
    fill = Materializer(model, device, reader=SafetensorsReader(folder))       # a local checkpoint
    fill.module_("model.layers.0.mlp.up_proj", module)   # its own parameters and buffers, on `device`
    fill_layer_(fill, layer, "model.layers.0", quant_cfg, seed)   # a whole (peft-wrapped) decoder layer

Random weights are drawn per module from the global generator re-seeded with (seed, the module's name in the plain
transformers model), inside `torch.random.fork_rng`: a module gets the same numbers whether the whole model is built
at once or one layer at a time on each rank (models/build.py and training/sharded_load.py both fill through here),
and the run's own random stream is left as it was. A weight tied to another (Gemma 3's head) is filled once.
"""

from __future__ import annotations

import contextlib
import json
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from medtune.config import QuantizationConfig
from medtune.models.anatomy import decoder_layers
from medtune.models.quantize import quantized_linear, quantized_linear_classes


class MissingWeightError(ValueError):
    """A checkpoint lacks a tensor the model needs, or holds none at all; the message names it."""


def module_seed(seed: int, name: str) -> int:
    """A 32-bit seed for the module `name` (stable across processes, unlike Python's hash)."""
    return zlib.crc32(f"{seed}/{name}".encode())


@contextlib.contextmanager
def kept_rng() -> Iterator[None]:
    """Random draws inside leave the global CPU (and current CUDA) generator as they found it."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        yield


@contextlib.contextmanager
def seeded(seed: int, name: str) -> Iterator[None]:
    """The global generators seeded for the module `name` inside, restored after."""
    with kept_rng():
        torch.manual_seed(module_seed(seed, name))
        yield


def canonical_name(name: str) -> str:
    """A module's name in the plain transformers model (peft's `base_model.model.` and `.base_layer` dropped)."""
    return name.removeprefix("base_model.model.").replace(".base_layer", "")


class SafetensorsReader:
    """Tensors of a local checkpoint folder (model.safetensors or a sharded index), read one at a time.

    `key_mapping`: regex -> replacement applied to the stored names (e.g. a multimodal Gemma 3's text weights)."""

    def __init__(self, folder: str | Path, key_mapping: dict[str, str] | None = None) -> None:
        folder = Path(folder)
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            files = json.loads(index.read_text())["weight_map"]
        elif (folder / "model.safetensors").is_file():
            from safetensors import safe_open

            with safe_open(folder / "model.safetensors", "pt") as handle:
                files = dict.fromkeys(handle.keys(), "model.safetensors")
        else:
            raise MissingWeightError(f"{folder} holds no model.safetensors or model.safetensors.index.json.")
        self.folder = folder
        self._where: dict[str, tuple[str, str]] = {}
        for stored, file in files.items():
            name = stored
            for pattern, replacement in (key_mapping or {}).items():
                name = re.sub(pattern, replacement, name)
            self._where[name] = (file, stored)
        self._open: dict[str, object] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def get(self, key: str) -> torch.Tensor:
        """The stored tensor `key` (as stored, on the CPU)."""
        from safetensors import safe_open

        file, stored = self._where[key]
        if file not in self._open:
            self._open[file] = safe_open(self.folder / file, "pt")
        return self._open[file].get_tensor(stored)


class Materializer:
    """Moves a module's own meta tensors to `device` and fills them: from `reader`, else seeded random init."""

    def __init__(
        self, model: nn.Module, device: torch.device, seed: int = 0, reader: SafetensorsReader | None = None
    ) -> None:
        self.init, self.device, self.seed, self.reader = model._init_weights, device, seed, reader
        counts = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
        self._tied = {key for key, n in counts.items() if n > 1}  # ids of meta parameters two modules share
        # a tied parameter's filled one, for its second owner; no other is kept here (a sharded layer's full
        # weights must be freed)
        self._moved: dict[int, nn.Parameter] = {}

    @torch.no_grad()
    def module_(self, name: str, module: nn.Module) -> None:
        """Fill `module`'s own (not its children's) parameters and buffers; `name` is its plain-model name."""
        fresh = []
        for key, param in list(module._parameters.items()):
            if param is None or not param.is_meta:
                continue
            if id(param) in self._moved:  # tied to a weight filled before: share it
                module._parameters[key] = self._moved[id(param)]
                continue
            new = nn.Parameter(torch.empty_like(param, device=self.device), requires_grad=param.requires_grad)
            module._parameters[key] = new
            if id(param) in self._tied:
                self._moved[id(param)] = new
            fresh.append(key)
        buffers = [k for k, b in module._buffers.items() if b is not None and b.is_meta]
        for key in buffers:
            module._buffers[key] = torch.empty_like(module._buffers[key], device=self.device)
        if not fresh and not buffers:
            return
        if self.reader is None or buffers:  # buffers (rotary frequencies, scales) are computed, not stored
            with seeded(self.seed, name):
                self.init(module)
        if self.reader is not None:
            for key in fresh:
                full = f"{name}.{key}"
                if full not in self.reader:
                    raise MissingWeightError(f"{self.reader.folder} has no tensor {full}.")
                module._parameters[key].copy_(self.reader.get(full))

    def linear(self, name: str, like: nn.Module, dtype: torch.dtype) -> nn.Linear:
        """A plain nn.Linear shaped like `like` (a quantised layer's meta stand-in), filled as `name`."""
        with torch.device("meta"):
            plain = nn.Linear(like.in_features, like.out_features, bias=like.bias is not None, dtype=dtype)
        self.module_(name, plain)
        return plain


def _is_adapter_part(name: str) -> bool:
    return any(part.startswith("lora_") for part in name.split("."))


def fill_layer_(
    fill: Materializer, layer: nn.Module, name: str, quant_cfg: QuantizationConfig, dtype: torch.dtype,
    lora_init: bool | str | None = None,
) -> None:  # fmt: skip
    """Fill a meta (peft-wrapped) decoder layer: base weights (quantised as configured) then its adapters."""
    quantized = quantized_linear_classes() if quant_cfg.method != "none" else ()
    for sub_name, module in list(layer.named_modules(prefix=name)):
        if _is_adapter_part(sub_name):
            continue
        if isinstance(module, quantized) and module.weight.is_meta:
            plain = fill.linear(canonical_name(sub_name), module, dtype)
            parent_name, _, attr = sub_name[len(name) + 1 :].rpartition(".")
            parent = layer.get_submodule(parent_name) if parent_name else layer
            setattr(parent, attr, quantized_linear(plain, quant_cfg, fill.device))
        else:
            fill.module_(canonical_name(sub_name), module)
    for sub_name, module in layer.named_modules(prefix=name):
        if hasattr(module, "lora_A") and hasattr(module, "reset_lora_parameters"):
            for adapter in module.lora_A:
                module.lora_A[adapter].to_empty(device=fill.device)
                module.lora_B[adapter].to_empty(device=fill.device)
            seed_adapter_(module, canonical_name(sub_name), fill.seed, lora_init)


def seed_adapter_(module: nn.Module, name: str, seed: int, lora_init: bool | str | None) -> None:
    """(Re-)initialise a peft LoRA layer's adapters from the seed of its name (split-invariant, see module doc)."""
    for adapter in module.lora_A:
        with seeded(seed, f"{name}/lora/{adapter}"):
            module.reset_lora_parameters(adapter, True if lora_init is None else lora_init)


def seed_adapters_(model: nn.Module, seed: int, lora_init: bool | str | None = None) -> int:
    """seed_adapter_ on every LoRA layer of a (peft) model; returns how many."""
    n = 0
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "reset_lora_parameters") and len(module.lora_A):
            seed_adapter_(module, canonical_name(name), seed, lora_init)
            n += 1
    return n


def split_modules(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], str]:
    """The (name, module) pairs outside the decoder layers (embeddings, final norm, rotary, head; plain-model names)
    and the decoder layers' own name (`model.layers`)."""
    layers = decoder_layers(model)
    in_layers = {id(m) for m in layers.modules()}
    named = list(model.named_modules())
    layers_name = next(name for name, module in named if module is layers)
    outside = [(canonical_name(n), m) for n, m in named if id(m) not in in_layers and not _is_adapter_part(n)]
    return outside, canonical_name(layers_name)
