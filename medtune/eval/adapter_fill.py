"""A saved adapter on a meta base, its tensors filled one decoder layer at a time (`python -m medtune.evaluate` under
sharding=fsdp with sharding.load=per_layer: runtime/shards.py shard_per_layer calls `fill_layer_` on each layer).

    model = attach_meta_adapter(skeleton, adapter_dir)     # peft's LoRA modules from adapter_config.json, on meta
    tensors = AdapterTensors(adapter_dir, model)            # every stored tensor checked against the model's
    shard_per_layer(model, model, ..., after_layer=tensors.fill_layer_)

The adapter loads as peft's `PeftModel.from_pretrained(base, dir, is_trainable=False)` loads it (the whole path,
adapter_check.py `load_adapter`): the same modules, adapter weights in float32 (peft's autocast) for a bf16 base, its
tensors copied from adapter_model.safetensors under peft's names (`...lora_A.weight`, `...lora_magnitude_vector`).
A damaged file, or one saved for another lora.r or target_modules, is an AdapterFileError before any layer is filled.
LoRA only (runtime/eval_model.py loads a DoRA adapter on the whole path).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medtune.eval.adapter_check import AdapterFileError, require_adapter_config
from medtune.models.materialize import kept_rng

log = logging.getLogger(__name__)

ADAPTER_NAME = "default"  # the name peft gives the one adapter it loads
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."  # a peft causal LM's names before the plain model's


def attach_meta_adapter(skeleton: nn.Module, path: str) -> nn.Module:
    """The adapter's LoRA modules (its adapter_config.json) on the meta base, frozen, weights not read yet."""
    from peft import PeftConfig, get_peft_model

    require_adapter_config(path)
    try:
        config = PeftConfig.from_pretrained(path)
    except (ValueError, TypeError, KeyError) as err:  # JSONDecodeError is a ValueError
        raise _damaged(path, err) from err
    config.inference_mode = True  # as is_trainable=False: the adapter is frozen
    with kept_rng():
        model = get_peft_model(skeleton, config)
    return model.requires_grad_(False)


def saved_key(name: str, adapter: str = ADAPTER_NAME) -> str:
    """The name peft stores a LoRA parameter under (get_peft_model_state_dict): the adapter name dropped, and a DoRA
    magnitude without its `.weight`."""
    if name.endswith(f"lora_magnitude_vector.{adapter}.weight"):
        name = name.removesuffix(".weight")
    return name.replace(f".{adapter}", "")


class AdapterTensors:
    """adapter_model.safetensors of `path`, checked against the LoRA parameters of `model`, read one layer at a
    time."""

    def __init__(self, path: str, model: nn.Module) -> None:
        from safetensors import SafetensorError, safe_open

        self.path = Path(path)
        expected = {saved_key(n): tuple(p.shape) for n, p in model.named_parameters() if "lora_" in n}
        try:
            self._file = safe_open(self.path / WEIGHTS_FILE, "pt")
            names = self._file.keys()
            stored = {k: tuple(self._file.get_slice(k).get_shape()) for k in names}
        except (SafetensorError, OSError, ValueError) as err:
            raise _damaged(path, err) from err
        problem = _difference(expected, stored)
        if problem:
            raise _damaged(path, ValueError(problem))
        self.filled = 0

    @torch.no_grad()
    def fill_layer_(self, layer: nn.Module, name: str) -> None:
        """Copy the stored tensors into the LoRA parameters of `layer` (plain-model name `name`)."""
        for sub_name, module in layer.named_modules(prefix=f"{PREFIX}{name}"):
            for key, param in list(module._parameters.items()):
                if param is None or "lora_" not in sub_name:
                    continue
                param.copy_(self._file.get_tensor(saved_key(f"{sub_name}.{key}")))
                self.filled += 1


def _difference(expected: dict[str, tuple], stored: dict[str, tuple]) -> str | None:
    missing = sorted(expected.keys() - stored.keys())
    extra = sorted(stored.keys() - expected.keys())
    shapes = sorted(k for k in expected.keys() & stored.keys() if expected[k] != stored[k])
    for label, keys in (("missing", missing), ("not in the model", extra)):
        if keys:
            return f"{len(keys)} tensors {label}, e.g. {keys[0]}"
    if shapes:
        key = shapes[0]
        return f"{key} has shape {list(stored[key])}, the model's is {list(expected[key])}"
    return None


def _damaged(path: Any, err: Exception) -> AdapterFileError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return AdapterFileError(
        f"the adapter in {path} cannot be loaded onto this model ({type(err).__name__}: {reason[:300]}): its "
        f"{WEIGHTS_FILE} or adapter_config.json is damaged or was saved for another lora.r or target_modules; copy "
        "the adapter again from its run, or point at the run's own adapter directory."
    )
