"""The speed switches change speed and memory, not results: same losses on a tiny model (CPU, fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medtune.config import compose
from medtune.models.anatomy import decoder_layers
from medtune.models.kernels import KernelsUnavailableError, apply_fused_kernels
from medtune.models.regional_compile import eager_layers
from medtune.runtime import process_group
from medtune.runtime.tracking import NullTracker
from medtune.training.recipe import TrainRecipe
from medtune.training.speed import apply_speedups

COMMON = ["model=tiny_llama", "trainer.device=cpu", "packing.max_seq_len=256", "trainer.micro_batch_size=2"]
COMMON += ["lora.dropout=0", "optim.schedule=constant", "optim.warmup_ratio=0", "eval=none", "logger=none"]
COMMON += ["trainer.autocast_dtype=null"]


def _losses(tmp_path: Path, *extra: str, steps: int = 3) -> list[float]:
    cfg = compose([*COMMON, *extra])
    torch.manual_seed(0)
    recipe = TrainRecipe(cfg, tmp_path, NullTracker(), process_group.init(cfg.sharding, "cpu"))
    recipe.setup()
    stream = recipe.data.train_stream({"epoch": 0, "batch": 0})
    out = [recipe.optimizer_step([next(stream)[0]])["train/loss"] for _ in range(steps)]
    recipe.release()
    return out


@pytest.fixture(scope="module")
def eager(tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    return _losses(tmp_path_factory.mktemp("eager"))


def test_offloaded_activations_change_nothing_on_a_cpu(eager: list[float], tmp_path: Path) -> None:
    """The offloader copies CUDA tensors only: on a CPU the switch trains exactly as without it (its copies and
    their bit-exactness on a GPU: tests/training/test_offload.py)."""
    assert _losses(tmp_path, "trainer.offload_activations=true") == pytest.approx(eager, rel=1e-6)


def test_peft_forward_trains_alike(eager: list[float], tmp_path: Path) -> None:
    """lora.fused (on by default, so in `eager`) changes no loss against peft's own forward."""
    assert _losses(tmp_path, "lora.fused=false") == pytest.approx(eager, rel=1e-5)


def test_bf16_adapters_are_stored_in_bf16_and_train_alike(eager: list[float], tmp_path: Path) -> None:
    cfg = compose([*COMMON, "lora.dtype=bfloat16"])
    recipe = TrainRecipe(cfg, tmp_path, NullTracker(), process_group.init(cfg.sharding, "cpu"))
    recipe.setup_model()
    dtypes = {p.dtype for p in recipe.model.parameters() if p.requires_grad}
    assert dtypes == {torch.bfloat16}
    recipe.release()
    assert _losses(tmp_path, "lora.dtype=bfloat16") == pytest.approx(eager, rel=2e-3)  # bf16 rounding, not a bug


@pytest.mark.slow  # inductor compiles the layer forward and backward: about a minute on 2 CPU cores
@pytest.mark.parametrize("attention", ["auto", "varlen"])
def test_compiled_layers_give_the_same_losses(attention: str, eager: list[float], tmp_path: Path) -> None:
    assert _losses(tmp_path, "trainer.compile=true", f"packing.attention={attention}") == pytest.approx(eager, rel=1e-5)


def test_scoring_runs_the_eager_forwards_and_training_gets_the_compiled_ones_back() -> None:
    from conftest import tiny_model

    model = tiny_model("tiny_llama")
    eager_forwards = [layer.forward for layer in decoder_layers(model)]
    applied = apply_speedups(model, compose([*COMMON, "trainer.compile=true"]).trainer)  # compiles lazily
    assert applied == ["compile:decoder_layers"]
    compiled = [layer.forward for layer in decoder_layers(model)]
    assert all(c != e for c, e in zip(compiled, eager_forwards, strict=True))
    with eager_layers(model):
        assert [layer.forward for layer in decoder_layers(model)] == eager_forwards
    assert [layer.forward for layer in decoder_layers(model)] == compiled


def test_fused_kernels_say_what_they_need(monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import tiny_model

    import medtune.models.kernels as kernels

    assert apply_fused_kernels(tiny_model("tiny_llama"), "none") == []
    monkeypatch.setattr(kernels.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(KernelsUnavailableError, match=r"needs liger_kernel and triton .* set trainer\.kernels=none"):
        apply_fused_kernels(tiny_model("tiny_llama"), "liger")
