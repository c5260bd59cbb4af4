"""Shared fixtures: tiny in-process models, the real-data directory, a scratch cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

# Without CUDA, Triton kernels (medtune/training/ce_kernel.py) run under Triton's interpreter when a test asks for
# them by name; triton reads this when it is first imported, so it is set before any test can import it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FIXTURES = TESTS / "fixtures"
ARCHS = REPO / "medtune" / "models" / "archs"
# a tiny CPU training run through medtune.train's overrides (tests add what they vary)
TINY_RUN = [
    "model=tiny_llama",
    "trainer.device=cpu",
    "trainer.micro_batch_size=2",
    "trainer.progress_bar=false",
    "packing.max_seq_len=1024",
    "optim.lr=3e-3",
    "optim.warmup_ratio=0",
]


def dict_config(overrides: list[str]):
    """conf/train.yaml composed with `overrides` as Hydra's DictConfig (what check_known_keys reads)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from medtune.config import CONF, register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


# the model section of a run's config.yaml for tests that write one (read back through the schema: load_run_config)
TINY_MODEL = {"name": "tiny_llama", "source": "builtin", "arch": "tiny_llama", "init": "random", "dtype": "float32"}


def tiny_config(arch: str, **overrides):
    """A transformers config for a tiny architecture shipped in medtune/models/archs."""
    from transformers import AutoConfig

    spec = json.loads((ARCHS / f"{arch}.json").read_text())
    spec.pop("_source", None)
    model_type = spec.pop("model_type")
    spec.update(overrides)
    return AutoConfig.for_model(model_type, **spec)


def tiny_model(arch: str = "tiny_llama", seed: int = 0, attn_implementation: str = "eager", **overrides):
    """A float32 random model of a tiny architecture, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(arch, **overrides)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real datasets (../shared/data or $MEDTUNE_DATA_DIR); skipped only when neither is configured."""
    env = os.environ.get("MEDTUNE_DATA_DIR")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if not path.is_dir():
        if env:
            pytest.fail(f"MEDTUNE_DATA_DIR={env} is not a directory")
        pytest.skip("no real data: set MEDTUNE_DATA_DIR to the shared data directory")
    return path


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private MEDTUNE_CACHE_DIR so tests never touch ~/.cache/medtune (except the model conversion)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("MEDTUNE_CACHE_DIR", str(path))
    return path
