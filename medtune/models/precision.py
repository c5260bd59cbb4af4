"""The dtype names of the config (`model.dtype`, `sharding.param_dtype`, `trainer.autocast_dtype`) as torch dtypes."""

from __future__ import annotations

import torch

TORCH_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
