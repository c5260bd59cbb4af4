"""Shared pieces of the config schemas: the error type, dtype names and value checks (no torch import)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_CACHE_ROOT = Path.home() / ".cache" / "medtune"
# The cache root every cache path defaults under (models/, data/, eval_base/): MEDTUNE_CACHE_DIR or ~/.cache/medtune
CACHE_ROOT = "${oc.env:MEDTUNE_CACHE_DIR,${oc.env:HOME}/.cache/medtune}"


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and the fix."""


def check_choice(key: str, value: Any, allowed: tuple) -> None:
    """ConfigError unless `value` is one of `allowed`; the message lists them."""
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {list(allowed)}; set {key} to one of them.")


def check_positive(key: str, value: float | int | None, allow_none: bool = False) -> None:
    """ConfigError unless `value` > 0 (or None when allowed)."""
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ConfigError(f"{key}={value!r} must be > 0.")


def cache_root() -> Path:
    """The cache root outside Hydra (command-line tools): $MEDTUNE_CACHE_DIR, else ~/.cache/medtune."""
    return Path(os.environ.get("MEDTUNE_CACHE_DIR", DEFAULT_CACHE_ROOT)).expanduser()


def resolve_dir(value: str) -> Path:
    """A config path that may still hold ${oc.env:...} interpolations (a DataConfig built outside Hydra)."""
    if "${" in value:
        from omegaconf import OmegaConf

        value = str(OmegaConf.create({"v": value}).v)
    return Path(value).expanduser()


def check_memory_settings(every: Any, layers: Any, offload: Any, budget: Any) -> None:
    """trainer.grad_ckpt_every, grad_ckpt_layers, offload_activations and memory_budget_gib, each on its own."""
    if every != "auto" and (isinstance(every, bool) or not isinstance(every, int) or every < 0):
        raise ConfigError(
            f"trainer.grad_ckpt_every={every!r} must be auto or a whole number >= 0 (0: no checkpointing, 1: every "
            "layer, k: every k-th)."
        )
    if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int) or layers < 0):
        raise ConfigError(f"trainer.grad_ckpt_layers={layers!r} must be null or a whole number of layers >= 0.")
    if offload not in ("auto", True, False):
        raise ConfigError(f"trainer.offload_activations={offload!r} must be auto, true or false.")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int | float) or budget <= 0):
        raise ConfigError(
            f"trainer.memory_budget_gib={budget!r} must be a positive number of GiB per GPU (e.g. 20), or null for "
            "the GPU's free memory less a margin."
        )


def checkpointed_layers(n_layers: int, every: Any, count: int | None) -> list[int]:
    """Indices of the decoder layers recomputed in backward. count=n (trainer.grad_ckpt_layers): n layers spread
    evenly, the last only when all are (backward starts there: a recomputed last layer would add a whole layer to
    the peak); else every `every`-th from 0. every=auto before the memory plan has settled it: every layer."""
    if count is not None:
        n = min(count, n_layers)
        return [i * n_layers // n for i in range(n)] if n else []
    every = 1 if every == "auto" else every
    return list(range(0, n_layers, every)) if every > 0 else []
