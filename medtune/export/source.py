"""What an export starts from: the adapter, its run directory (if any), and how to rebuild the base offline.

    source = resolve_source(Path("runs/2026-11-30/01-03-00_demo"), base=None)
    source.adapter_dir, source.model_cfg, source.quant_cfg, source.seed

A run directory gives the base exactly as trained (its config.yaml read through the schema, medtune.config.
load_run_config: model, quantization, seed, which a random-init base needs). A bare adapter directory names its base
in adapter_config.json; `--base DIR` replaces either. Every problem the user can fix is an ExportInputError with one
line naming the path or argument and the fix (exit code 2).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from medtune.config import ConfigError, ModelConfig, QuantizationConfig, TrainConfig, load_run_config
from medtune.models.build import arch_config

SUPPORTED_MODEL_TYPES = ("gemma3_text", "gemma3", "llama")  # gemma3: a multimodal checkpoint, its text model only


class ExportInputError(ValueError):
    """Bad input to an export (path, argument, disk, existing output); the message says what to fix."""


@dataclass
class ExportSource:
    """The adapter to merge and everything known about its run."""

    adapter_dir: Path
    run_dir: Path | None
    model_cfg: ModelConfig
    quant_cfg: QuantizationConfig
    seed: int = 0
    run_cfg: TrainConfig | None = None  # the run's config.yaml (None for a bare adapter), for the model card

    @property
    def label(self) -> str:
        """A short name for the export: the run directory's name, else the adapter's."""
        return (self.run_dir or self.adapter_dir).name


def _find_adapter(path: Path) -> tuple[Path, Path | None]:
    if not path.exists():
        raise ExportInputError(f"{path} does not exist; pass a run directory (with adapter/) or an adapter directory.")
    if (path / "adapter_config.json").is_file():
        return path, (path.parent if (path.parent / "config.yaml").is_file() else None)
    if (path / "config.yaml").is_file():
        if not (path / "adapter" / "adapter_config.json").is_file():
            raise ExportInputError(
                f"run {path} has no adapter ({path / 'adapter' / 'adapter_config.json'} is missing): the run did not "
                "finish training or was an eval-only run; train it first, or pass an adapter directory."
            )
        return path / "adapter", path
    raise ExportInputError(
        f"{path} is neither a run directory (config.yaml + adapter/) nor an adapter directory (adapter_config.json)."
    )


def _run_config(run_dir: Path) -> TrainConfig:
    """The run's config.yaml through the schema; one that cannot be read is bad input (exit 2), said in one line."""
    try:
        return load_run_config(run_dir / "config.yaml")
    except ConfigError as err:
        raise ExportInputError(f"{err} (the run's config; or pass its adapter/ directory and --base DIR)") from None


def _hub_snapshot(repo_id: str) -> str | None:
    """The local snapshot folder of a hub id already in the Hugging Face cache, else None (nothing is downloaded)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except (LocalEntryNotFoundError, ValueError, OSError):
        return None


def _check_base_offline(model_cfg: ModelConfig, where: str) -> None:
    """The base must be on this machine: a local directory, or a hub id in the cache (then read from there)."""
    if model_cfg.source != "hf" or model_cfg.init == "random":
        return
    path = model_cfg.path or ""
    local = Path(path).expanduser()
    if local.is_dir() and (local / "config.json").is_file():
        return
    snapshot = None if path.startswith(("/", ".", "~")) else _hub_snapshot(path)
    if snapshot and (Path(snapshot) / "config.json").is_file():
        model_cfg.path = snapshot  # a local path: transformers then never asks the hub for a newer revision
        return
    raise ExportInputError(
        f"the adapter's base {path!r} ({where}) cannot be found offline: it is neither a local model directory nor "
        f"in the Hugging Face cache; download it where the hub is reachable (`hf download {path} --local-dir DIR`), "
        "copy DIR here and pass --base DIR."
    )


def _check_model_type(model_cfg: ModelConfig) -> None:
    """Fail before loading anything when the base is neither Gemma 3 nor Llama."""
    config = None
    if model_cfg.arch:
        config = arch_config(model_cfg.arch).to_dict()
    elif model_cfg.source == "hf" and Path(model_cfg.path or "").expanduser().is_dir():
        config = json.loads((Path(model_cfg.path).expanduser() / "config.json").read_text())
    if config is not None and config.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise ExportInputError(
            f"the base is a {config.get('model_type')!r} model; medtune exports Gemma 3 (text) and Llama models only."
        )


def resolve_source(path: Path, base: str | None = None) -> ExportSource:
    """Find the adapter and the run behind `path`; check that the base can be rebuilt offline."""
    adapter_dir, run_dir = _find_adapter(Path(path).expanduser())
    try:
        adapter_cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise ExportInputError(
            f"{adapter_dir / 'adapter_config.json'} is not valid JSON ({err}); copy the adapter again from its run."
        ) from err
    run_cfg = _run_config(run_dir) if run_dir else None
    if run_cfg is not None:  # copies: --base and the offline check below change them, the run's record stays
        model_cfg, quant_cfg = copy.deepcopy(run_cfg.model), copy.deepcopy(run_cfg.quantization)
        where = f"model.path in {run_dir / 'config.yaml'}"
    else:
        named = adapter_cfg.get("base_model_name_or_path")
        if not (base or named):
            raise ExportInputError(
                f"{adapter_dir / 'adapter_config.json'} names no base model and there is no run config.yaml next to "
                "it; pass --base DIR (the base model directory)."
            )
        model_cfg = ModelConfig(name=Path(base or named).name, source="hf", path=base or named, dtype="float32")
        quant_cfg = QuantizationConfig()
        where = f"base_model_name_or_path in {adapter_dir / 'adapter_config.json'}"
    if base:  # --base replaces where the base comes from; architecture, dtype and quantisation stay the run's
        model_cfg.source, model_cfg.path, model_cfg.init = "hf", base, "pretrained"
        where = "--base"
    _check_base_offline(model_cfg, where)
    _check_model_type(model_cfg)
    return ExportSource(adapter_dir, run_dir, model_cfg, quant_cfg, run_cfg.seed if run_cfg else 0, run_cfg)
