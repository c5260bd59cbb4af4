"""The learning-rate schedule as a pure function of the step: linear warmup, then cosine, linear or constant.

`optim.build_scheduler` wraps it in a torch LambdaLR; `resume` evaluates it without torch to tell whether a new
`trainer.max_steps` would have given the steps already trained another learning rate.
"""

from __future__ import annotations

import math

from medtune.config import OptimConfig


def warmup_steps(optim: OptimConfig, max_steps: int) -> int:
    """Warmup length: optim.warmup_steps when set, else warmup_ratio of the run."""
    return optim.warmup_steps or round(optim.warmup_ratio * max_steps)


def lr_factor(optim: OptimConfig, max_steps: int, step: int) -> float:
    """Multiplier of optim.lr at optimizer step `step` (0-based) of a run of `max_steps` steps."""
    warmup = warmup_steps(optim, max_steps)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if optim.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if optim.schedule == "cosine" else 1 - progress
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * decay
