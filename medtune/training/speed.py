"""The step's optional speed-ups, each a config switch measured on its own (experiments/results/efficiency_h200/).

    applied = apply_speedups(model, cfg.trainer)      # fused kernels, then regional compile; returns what it did

Regional compilation compiles each decoder layer's forward (the layers are identical, so Dynamo compiles one per
layer type and reuses it; packed rows have one length, so one shape), not the whole model: a fraction of whole-model
compile time, and FSDP's per-layer hooks stay outside the compiled code. Shapes are left to Dynamo's automatic
dynamic (`dynamic=None`): the flash varlen kernel's sequence bounds and bucketed max length change from batch to
batch, and after their first change they become symbolic instead of recompiling the layers for every batch.
Scoring (lm-eval, watch sets) runs the eager forwards (`eager_layers`): its batches have a new length every time.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

from medtune.config import TrainerConfig
from medtune.models.anatomy import decoder_layers
from medtune.models.kernels import apply_fused_kernels

log = logging.getLogger("medtune.train")
_EAGER = "_medtune_eager_forward"  # where a compiled layer keeps its eager forward


def apply_speedups(model: nn.Module, tc: TrainerConfig) -> list[str]:
    """Fused kernels (trainer.kernels, trainer.rms_norm) and regional compilation (trainer.compile), in place."""
    applied = [f"kernels:{name}" for name in apply_fused_kernels(model, tc.kernels, tc.rms_norm)]
    if tc.compile:
        for layer in decoder_layers(model):
            setattr(layer, _EAGER, layer.forward)
            layer.forward = torch.compile(layer.forward, dynamic=None)
        applied.append("compile:decoder_layers")
        log.info("torch.compile: each decoder layer's forward, compiled at its first step (time to first step grows)")
    return applied


@contextlib.contextmanager
def eager_layers(model: nn.Module) -> Iterator[None]:
    """The decoder layers' eager forwards for the duration (no recompilation for scoring batches of new lengths)."""
    swapped = [(layer, layer.forward) for layer in decoder_layers(model) if hasattr(layer, _EAGER)]
    for layer, _ in swapped:
        layer.forward = getattr(layer, _EAGER)
    try:
        yield
    finally:
        for layer, compiled in swapped:
            layer.forward = compiled
