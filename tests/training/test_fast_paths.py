"""Every `auto` settled before loading, the fast paths a run took named, and the ones it could not take said why."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from medtune.config import compose
from medtune.models import kernels
from medtune.models.kernels import resolve_kernels
from medtune.runtime.process_group import DistInfo
from medtune.training import fast_paths
from medtune.training.recipe import TrainRecipe
from medtune.training.step_metrics import FlopModel

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
TINY = ["model=tiny_llama", "trainer.device=cpu", "trainer.progress_bar=false", "packing.max_seq_len=256", "eval=none"]


def test_on_a_cpu_the_gpu_paths_are_refused_with_their_reason() -> None:
    kind, norm, refused = resolve_kernels("auto", "auto", "cpu", "llama")
    assert (kind, norm) == ("none", "kernels")
    assert any("liger: needs a CUDA GPU" in r for r in refused) and any("rms_norm" in r for r in refused)


def test_on_cuda_liger_when_installed_and_the_architecture_is_covered(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(kernels.importlib.util, "find_spec", lambda name: object() if name in
                        ("liger_kernel", "triton") else real(name))  # fmt: skip
    assert resolve_kernels("auto", "auto", "cuda", "gemma3_text") == ("liger", "torch", [])
    kind, norm, refused = resolve_kernels("auto", "auto", "cuda", "qwen3")
    assert (kind, norm) == ("none", "kernels") and "not qwen3" in refused[0]
    assert "RMSNorm of gemma3_text, llama only, not qwen3" in refused[1]  # not "CUDA only" on a CUDA device
    assert resolve_kernels("none", "kernels", "cuda", "llama") == ("none", "kernels", [])  # set by hand: kept


def test_on_cuda_without_liger_the_reason_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels.importlib.util, "find_spec", lambda name: None)
    kind, norm, refused = resolve_kernels("auto", "auto", "cuda", "llama")
    assert (kind, norm) == ("none", "torch")
    assert refused == ["liger: liger_kernel and triton not installed (pip install 'medtune[gpu]')"]


def test_settle_on_a_cpu_checkpoints_every_layer_and_records_why() -> None:
    cfg, record = fast_paths.settle(compose(TINY), CPU)
    assert (cfg.trainer.kernels, cfg.trainer.rms_norm, cfg.trainer.offload_activations) == ("none", "kernels", False)
    assert cfg.trainer.grad_ckpt_every == 1 and "no memory budget" in record["plan/reason"]
    assert "liger: needs a CUDA GPU" in record["run/fast_paths_refused"]


def test_settle_with_a_budget_plans_the_recomputation() -> None:
    """A budget given by hand is planned on any device; a generous one recomputes nothing."""
    cfg, record = fast_paths.settle(compose([*TINY, "trainer.memory_budget_gib=40"]), CPU)
    assert record["plan/checkpointed_layers"] == 0 and cfg.trainer.checkpointed_layers(2) == []
    assert record["plan/budget_gib"] == 40


def test_the_recipe_checkpoints_the_planned_layers_and_names_its_paths(tmp_path: Path) -> None:
    cfg, _ = fast_paths.settle(compose([*TINY, "trainer.grad_ckpt_layers=1"]), CPU)
    recipe = TrainRecipe(cfg, tmp_path, tracker=None, dist=CPU)
    recipe.setup_model()
    recipe.log_fast_paths()
    flags = [layer.gradient_checkpointing for layer in kernels.causal_lm_of(recipe.model).model.layers]
    assert flags == [True, False] and recipe.summary["trainer/checkpointed_layers"] == 1
    line = recipe.summary["run/fast_paths"]
    for part in ("attention=", "kernels=none", "loss=torch", "lora=fused+base(float32)", "recompute=1/2 layers",
                 "offload=off"):  # fmt: skip
        assert part in line


def test_nemo_convention_counts_no_recomputation() -> None:
    flops = FlopModel(matmul_params=1000, lora_params=10, n_layers=2, attn_dim=8, ckpt_fraction=1.0)
    full = 6 * 1000 + 12 * 2 * 8 * 50.0
    assert flops.per_token_nemo(50.0) == pytest.approx(full * (2 + 10 / 1000) / 3)
    no_ckpt = FlopModel(1000, 10, 2, 8, 0.0)
    assert no_ckpt.per_token_nemo(50.0) == flops.per_token_nemo(50.0)  # recomputation never counted
    # without recomputation they differ only by the adapters' share: medtune counts 6 FLOPs per adapter parameter,
    # NeMo scales the whole (attention included) by N_lora / N_matmul / 3
    attention = 12 * 2 * 8 * 50.0
    assert no_ckpt.per_token(50.0) - no_ckpt.per_token_nemo(50.0) == pytest.approx(
        6 * 10 - 2 * 10 - attention * 10 / 1000 / 3
    )
