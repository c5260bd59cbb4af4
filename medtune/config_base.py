"""Shared pieces of the config schemas: the error type, dtype names and value checks (no torch import)."""

from __future__ import annotations

from typing import Any

DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and the fix."""


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {list(allowed)}; set {key} to one of them.")


def _positive(key: str, value: float | int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ConfigError(f"{key}={value!r} must be > 0.")
