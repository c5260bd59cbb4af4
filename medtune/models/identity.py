"""Which base an adapter was trained on, recorded beside it, so that it is never applied to another base unnoticed.

    identity = base_identity(model, "nf4")              # at build time (build_model attaches it to the model)
    write_identity(adapter_dir, identity)               # save_adapter does this: <adapter>/base_identity.json
    problem = identity_mismatch(read_identity(adapter_dir), base_identity(base, "none"))   # None: the same base

The identity is the architecture (model type and the config sizes that shape every tensor), the quantization the
base was trained under, and a weights fingerprint: SHA-256 of 4,096 evenly spaced values of the input embedding
(plus its shape), rounded to bfloat16 first. The embedding is never quantized (bitsandbytes and medtune quantize
linear layers only) and bfloat16 rounding is exact for a bf16 base loaded in float32, so the same weights give the
same fingerprint under nf4, int8 or none and in any dtype; another checkpoint or another seed's random base does not.
A base quantized otherwise is the same base (an export merges into the dequantized weights): it is reported, not
refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

IDENTITY_FILE = "base_identity.json"
SAMPLE_VALUES = 4096
ARCH_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
)
FINGERPRINT_METHOD = f"sha256 of the input embedding's shape and {SAMPLE_VALUES} evenly spaced values as bfloat16"


def sample_index(numel: int, count: int = SAMPLE_VALUES) -> torch.Tensor:
    """`count` evenly spaced positions in [0, numel), first and last included, in integers (a float32 linspace rounds
    past the end once numel passes 2**24: Gemma 3's 262,144 x 640 embedding did)."""
    count = min(count, numel)
    return torch.arange(count, dtype=torch.int64) * (numel - 1) // max(count - 1, 1)


def architecture_of(config: Any) -> dict[str, Any]:
    """The architecture part of an identity: the config sizes that shape every tensor (ARCH_KEYS)."""
    return {key: getattr(config, key, None) for key in ARCH_KEYS}


def base_identity(model: nn.Module, quantization: str) -> dict[str, Any]:
    """Architecture, quantization and weights fingerprint of a base model (see the module docstring)."""
    architecture = architecture_of(model.config)
    weight = model.get_input_embeddings().weight.detach()
    flat = weight.reshape(-1)
    sample = (
        flat[sample_index(flat.numel()).to(flat.device)].to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes()
    )
    digest = hashlib.sha256(json.dumps(list(weight.shape)).encode() + sample).hexdigest()[:16]
    return {
        "architecture": architecture,
        "quantization": quantization,
        "weights_fingerprint": digest,
        "fingerprint_method": FINGERPRINT_METHOD,
    }


def write_identity(adapter_dir: Path, identity: dict[str, Any]) -> Path:
    """Write `identity` as <adapter_dir>/base_identity.json."""
    path = Path(adapter_dir) / IDENTITY_FILE
    path.write_text(json.dumps(identity, indent=1, sort_keys=True) + "\n")
    return path


def read_identity(adapter_dir: Path) -> dict[str, Any] | None:
    """The recorded identity of an adapter's base; None for an adapter saved before medtune recorded it."""
    path = Path(adapter_dir) / IDENTITY_FILE
    if not path.is_file():
        return None
    try:
        identity = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); restore it from the run, or delete it.") from err
    if not isinstance(identity, dict) or "weights_fingerprint" not in identity:
        raise ValueError(f"{path} holds no weights_fingerprint; restore it from the run, or delete it.")
    return identity


def identity_mismatch(recorded: dict[str, Any] | None, current: dict[str, Any]) -> str | None:
    """What differs between the adapter's recorded base and this one (architecture or weights); None if nothing.

    A different quantization alone is logged, not returned: the weights are the same."""
    if recorded is None:
        return None
    diffs = [
        f"{key} {recorded['architecture'].get(key)} vs {value}"
        for key, value in current["architecture"].items()
        if recorded.get("architecture", {}).get(key) != value
    ]
    if diffs:
        return "another architecture (adapter's base vs this one: " + ", ".join(diffs) + ")"
    if recorded["weights_fingerprint"] != current["weights_fingerprint"]:
        return (
            f"other weights (fingerprint {recorded['weights_fingerprint']} recorded, {current['weights_fingerprint']} "
            "now: another checkpoint, or another seed of a random-init base)"
        )
    if recorded.get("quantization") != current.get("quantization"):
        log.info(
            "the adapter was trained on the base quantized as %s; it is applied to it quantized as %s (same weights)",
            recorded.get("quantization"),
            current.get("quantization"),
        )
    return None
