"""Architecture files (`medtune/models/archs/<arch>.json`, or any config.json) read without torch.

    spec = read_arch_spec("gemma3_4b")        # the text model's config dict (a multimodal gemma3 file: its text part)

The model builder turns a spec into a transformers config; the memory estimator reads the shape from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ARCHS_DIR = Path(__file__).resolve().parent / "archs"
# the text architectures whose layers models/kernels.py knows how to fuse (Liger's kernels, torch's RMSNorm); the
# memory estimator reads the same tuple to know which path a GPU run takes
FUSABLE_MODEL_TYPES = ("gemma3_text", "llama")


class ArchNotFoundError(ValueError):
    """model.arch names no architecture file; the message lists the shipped ones."""


def arch_path(arch: str) -> Path:
    """The file for `arch`: a shipped name (`tiny_llama`) or a path to a config.json."""
    path = Path(arch).expanduser()
    return path if path.suffix == ".json" else ARCHS_DIR / f"{arch}.json"


def read_arch_spec(arch: str) -> dict[str, Any]:
    """The architecture's config as a dict (the text part of a multimodal Gemma 3), `_source` dropped."""
    path = arch_path(arch)
    if not path.is_file():
        known = sorted(p.stem for p in ARCHS_DIR.glob("*.json"))
        raise ArchNotFoundError(f"model.arch={arch}: no {path}; use one of {known} or a path to a config.json.")
    spec = json.loads(path.read_text())
    spec = spec.get("text_config", spec) if spec.get("model_type") == "gemma3" else spec
    spec.pop("_source", None)
    return spec
