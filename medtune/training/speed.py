"""The step's optional speed-ups, each a config switch measured on its own (experiments/results/efficiency_h200/).

    applied = apply_speedups(model, cfg.trainer)      # fused kernels, then regional compile; returns what it did

Regional compilation (models/regional_compile.py) compiles each decoder layer's forward, not the whole model: a
fraction of whole-model compile time; packed rows have one length, so one shape, and the flash varlen kernel's
changing sequence bounds become symbolic after their first change instead of recompiling the layers every batch.
Scoring (lm-eval, watch sets) runs the eager forwards (models/regional_compile.py `eager_layers`).
"""

from __future__ import annotations

import logging

from torch import nn

from medtune.config import TrainerConfig
from medtune.models.kernels import apply_fused_kernels
from medtune.models.regional_compile import compile_layers

log = logging.getLogger("medtune.train")


def apply_speedups(model: nn.Module, tc: TrainerConfig) -> list[str]:
    """Fused kernels (trainer.kernels, trainer.rms_norm) and regional compilation (trainer.compile), in place."""
    applied = [f"kernels:{name}" for name in apply_fused_kernels(model, tc.kernels, tc.rms_norm)]
    if tc.compile:
        compile_layers(model)
        applied.append("compile:decoder_layers")
        log.info("torch.compile: each decoder layer's forward, compiled at its first step (time to first step grows)")
    return applied
