"""The two output formats: write one from the merged model, load it back, and estimate its size beforehand.

safetensors   a Hugging Face folder (config, model.safetensors, tokenizer) in the base's dtype
gguf          one `<name>-<quant>.gguf` (f16 or q8_0) with the tokenizer inside, and an Ollama Modelfile
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from medtune.config import ModelConfig
from medtune.export.card import base_license_terms
from medtune.export.gguf_loader import ExportLoadError, load_gguf
from medtune.export.gguf_writer import estimate_gguf_bytes, write_gguf
from medtune.export.merge import Merged
from medtune.export.source import ExportInputError, ExportSource
from medtune.models.build import base_config
from medtune.models.precision import TORCH_DTYPES

# tokenizer files grow with the vocabulary: Gemma 3's tokenizer.json is 33 MB for 262,144 tokens (~128 B a token)
TOKENIZER_BYTES_PER_TOKEN = 128
SMALL_FILES_BYTES = 16 * 2**10  # config, card, Modelfile, check record: a few KB
DTYPE_NAMES = {dtype: name for name, dtype in TORCH_DTYPES.items()}


def _param_shapes(model_cfg: ModelConfig) -> tuple[list[tuple[int, ...]], int]:
    """The weights' shapes (tied ones once, as both formats store them) and the vocabulary size."""
    from transformers import AutoModelForCausalLM

    config = base_config(model_cfg)
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = AutoModelForCausalLM.from_config(config)
    return [tuple(p.shape) for p in model.parameters()], int(config.get_text_config().vocab_size)


def estimate_bytes(model_cfg: ModelConfig, fmt: str, quant: str) -> int:
    """About how many bytes the export of this base takes on disk, from its architecture alone: the parameter
    count times the bytes of the dtype (safetensors) or of the GGUF type, plus the tokenizer and a few small files."""
    try:
        shapes, vocab_size = _param_shapes(model_cfg)
    except (OSError, ValueError) as err:
        raise ExportInputError(f"cannot read the base's architecture to size the export: {err}") from err
    extra = vocab_size * TOKENIZER_BYTES_PER_TOKEN + SMALL_FILES_BYTES
    if fmt == "gguf":
        return estimate_gguf_bytes(shapes, quant) + extra
    itemsize = torch.empty(0, dtype=TORCH_DTYPES[model_cfg.dtype]).element_size()
    return sum(int(torch.Size(s).numel()) for s in shapes) * itemsize + extra


def gguf_name(label: str, quant: str) -> str:
    """A file name from the run's name: letters, digits, '-', '_', '.' only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_.") + f"-{quant}.gguf"


def _sizes(folder: Path) -> dict[str, Any]:
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    return {"files": files, "bytes": sum(files.values())}


def _write_safetensors(merged: Merged, dtype: torch.dtype, folder: Path) -> None:
    state = {name: tensor.to(dtype) for name, tensor in merged.model.state_dict().items()}
    merged.model.save_pretrained(folder, state_dict=state)
    config = json.loads((folder / "config.json").read_text())
    config["dtype"] = DTYPE_NAMES[dtype]  # the weights' dtype, not the float32 the merged model computes in
    # medtune loads a multimodal Gemma 3's text model through a subclass; servers pick the class by this name
    config["architectures"] = [
        next(c.__name__ for c in type(merged.model).__mro__ if c.__module__.startswith("transformers."))
    ]
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    merged.tokenizer.save_pretrained(folder)


def _write_gguf(merged: Merged, source: ExportSource, quant: str, folder: Path) -> Path:
    path = folder / gguf_name(source.label, quant)
    meta = {"name": f"{source.model_cfg.name} medtune {source.label}", "license": base_license_terms(source)[0]}
    with tempfile.TemporaryDirectory() as tokenizer_dir:  # gguf.SpecialVocab reads the saved tokenizer files
        merged.tokenizer.save_pretrained(tokenizer_dir)
        merged.model.config.save_pretrained(tokenizer_dir)
        write_gguf(merged.model, merged.tokenizer, Path(tokenizer_dir), path, quant, meta)
    return path


def write(merged: Merged, source: ExportSource, fmt: str, quant: str, folder: Path) -> dict[str, Any]:
    """Write one format into folder; returns the weight type (float32 / bfloat16 / f16 / q8_0) and file sizes."""
    if fmt == "safetensors":
        dtype = TORCH_DTYPES[source.model_cfg.dtype]
        _write_safetensors(merged, dtype, folder)
        return {"weight_type": DTYPE_NAMES[dtype], "files": _sizes(folder)}
    path = _write_gguf(merged, source, quant, folder)
    return {"weight_type": quant, "files": _sizes(folder) | {"gguf": path.name}}


def load_back(fmt: str, folder: Path) -> tuple[torch.nn.Module, Any]:
    """The export as a user would load it: transformers from the folder, or from the GGUF (float32 compute)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if fmt == "gguf":
        return load_gguf(next(folder.glob("*.gguf")))
    model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    if info["missing_keys"] or info["mismatched_keys"]:
        raise ExportLoadError(f"{folder} loads incompletely: missing {info['missing_keys'][:5]}")
    return model.eval(), AutoTokenizer.from_pretrained(folder)
