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
