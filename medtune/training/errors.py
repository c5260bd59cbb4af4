"""The error a training run stops with when the user can act on the reason (NaN loss, out of memory, nothing to
train); its own module so that the recipe and the builders it calls raise the same class."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """A run stopped for a reason the user can act on (NaN loss, out of memory)."""
