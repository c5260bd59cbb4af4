"""The optimizer and learning-rate schedule of a run, over the model's trainable parameters (the recipe's setup).

The schedule itself is a pure function of the step (training/schedule.py); here it becomes a torch LambdaLR.
"""

from __future__ import annotations

import torch

from medtune.config import OptimConfig
from medtune.training.errors import TrainingError
from medtune.training.schedule import lr_factor


def build_optimizer(oc: OptimConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer named by optim._target_ over the trainable parameters."""
    from hydra.utils import get_class

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("no trainable parameters: is lora.enabled=true and are lora.target_modules in the model?")
    cls = get_class(oc._target_)
    return cls(params, lr=oc.lr, weight_decay=oc.weight_decay, betas=tuple(oc.betas), eps=oc.eps)


def build_scheduler(
    optim: OptimConfig, total: int, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then cosine or linear decay to min_lr_ratio * lr (or constant) over `total` steps
    (trainer.max_steps): see training/schedule.py."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(optim, total, step))
