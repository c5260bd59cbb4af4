"""sharding.load=per_layer under gloo (training/sharded_load.py): each rank fills and shards one decoder layer at a
time, the gathered model equals the one-process model bit for bit (random init, nf4, a local sharded checkpoint;
2 ranks and an uneven 3), one training step gives the whole path's losses, and the tensor memory a rank allocates
while loading stays under its shard plus one unit (a decoder layer or the root's modules) plus a small slack, which
the whole path exceeds.

Each launch runs tests/fixtures/sharded_load_worker.py under torchrun with a subprocess timeout (a hang fails)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ARCHS, REPO
from fixtures.sharded_load_worker import full_state

from medtune.config import compose
from medtune.models.anatomy import decoder_layers
from medtune.models.build import build_model
from medtune.models.lora import apply_lora
from medtune.models.materialize import split_modules

WORKER = REPO / "tests" / "fixtures" / "sharded_load_worker.py"
TIMEOUT_S = 300
COMMON = ["lora.dropout=0", "seed=3"]
SLACK_BYTES = 32 * 1024  # RNG states, FSDP's bookkeeping tensors: a few KiB measured on the tiny models


def _launch(nproc: int, out: Path, *overrides: str) -> list[dict]:
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), str(WORKER), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDTUNE_CACHE_DIR": str(out / "cache")}
    proc = subprocess.run(
        [*cmd, *COMMON, *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(nproc)]


def _one_process(*overrides: str) -> torch.nn.Module:
    """The adapted model as one process builds it (models/build.py, then apply_lora), seeded as the workers are."""
    cfg = compose(["trainer.device=cpu", *COMMON, *overrides])
    torch.manual_seed(cfg.seed)
    model, _ = build_model(cfg.model, cfg.quantization, torch.device("cpu"))
    layers = cfg.trainer.checkpointed_layers(len(decoder_layers(model)))
    return apply_lora(model, cfg.lora, cfg.quantization, layers)


def _assert_same_state(out: Path, reference: torch.nn.Module) -> None:
    ours, theirs = torch.load(out / "state.pt"), full_state(reference)
    assert ours.keys() == theirs.keys() and ours
    for key, value in theirs.items():  # bit for bit: 4-bit weights stored as floats may hold NaN patterns
        assert ours[key].dtype == value.dtype and ours[key].shape == value.shape, key
        assert torch.equal(ours[key].reshape(-1).view(torch.uint8), value.reshape(-1).view(torch.uint8)), key


def _unit_bytes(model: torch.nn.Module) -> int:
    """The largest piece loaded at once: one decoder layer (adapters included) or the root's own modules."""

    def size(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())

    layer = max(size(layer.parameters()) for layer in decoder_layers(model))
    outside, _ = split_modules(model)
    root = size(t for _, module in outside for t in [*module.parameters(False), *module.buffers(False)])
    return max(layer, root)


def _arch(tmp_path: Path, base: str, layers: int) -> str:
    """A shipped tiny architecture with `layers` decoder layers (its layer-type pattern repeated)."""
    spec = json.loads((ARCHS / f"{base}.json").read_text())
    spec["num_hidden_layers"] = layers
    if "layer_types" in spec:
        spec["layer_types"] = [spec["layer_types"][i % len(spec["layer_types"])] for i in range(layers)]
    path = tmp_path / f"{base}_{layers}.json"
    path.write_text(json.dumps(spec))
    return str(path)


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_per_layer_loading_equals_one_process_within_a_share(quantization: str, tmp_path: Path) -> None:
    """8 Llama layers on 2 ranks: the per-layer model is the one-process model, trains as the whole path does, and
    its loading peak is under shard + one unit + slack, a bound the whole path breaks."""
    overrides = ["model=tiny_llama", f"model.arch={_arch(tmp_path, 'tiny_llama', 8)}"]
    if quantization == "nf4":  # FSDP flattens in param_dtype (float32 on the CPU): the 4-bit storage must match
        overrides += ["quantization=nf4", "quantization.quant_storage=float32"]
    per_layer = _launch(2, tmp_path / "per_layer", *overrides, "sharding.load=per_layer")
    whole = _launch(2, tmp_path / "whole", *overrides, "sharding.load=whole")
    _assert_same_state(tmp_path / "per_layer", _one_process(*overrides))
    unit = _unit_bytes(_one_process(*overrides[:2]))  # unquantised: a layer is filled in model.dtype, then quantised
    for ours, theirs in zip(per_layer, whole, strict=True):
        assert ours["losses"] == theirs["losses"] and ours["losses"][1] < ours["losses"][0]
        assert ours["shard_bytes"] == theirs["shard_bytes"]
        bound = ours["shard_bytes"] + unit + SLACK_BYTES
        assert ours["peak_bytes"] <= bound < theirs["peak_bytes"], (ours, theirs, unit)


@pytest.mark.slow
def test_uneven_shards_and_tied_embeddings_on_three_ranks(tmp_path: Path) -> None:
    """Gemma 3 (tied head, sliding-window layers), 5 layers and a 512-row vocabulary over 3 ranks."""
    overrides = ["model=tiny_gemma3", f"model.arch={_arch(tmp_path, 'tiny_gemma3', 5)}"]
    ranks = _launch(3, tmp_path / "per_layer", *overrides)
    _assert_same_state(tmp_path / "per_layer", _one_process(*overrides))
    unit = _unit_bytes(_one_process(*overrides))
    assert len({r["local_elements"] for r in ranks}) > 1  # the shares differ (FSDP pads them to one size)
    for rank in ranks:
        assert rank["peak_bytes"] <= rank["shard_bytes"] + unit + SLACK_BYTES, (rank, unit)
        assert rank["losses"] == ranks[0]["losses"]


@pytest.mark.slow
def test_a_local_sharded_checkpoint_loads_layer_by_layer(tmp_path: Path) -> None:
    """model.path = a folder of several safetensors files and an index: the per-layer model is from_pretrained's."""
    from transformers import AutoModelForCausalLM

    from medtune.models.build import arch_config

    torch.manual_seed(11)
    saved = AutoModelForCausalLM.from_config(arch_config("tiny_llama"), dtype=torch.float32)
    saved.save_pretrained(tmp_path / "ckpt", max_shard_size="100KB")
    overrides = ["model=tiny_llama", "model.source=hf", f"model.path={tmp_path / 'ckpt'}", "model.init=pretrained"]
    _launch(2, tmp_path / "per_layer", *overrides, "model.tokenizer=bytes")
    _assert_same_state(tmp_path / "per_layer", _one_process(*overrides, "model.tokenizer=bytes"))
