"""merge_adapter: the merged float32 model is the model the run trained and evaluated, nf4 base included."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from fixtures.export_run import make_run

from medtune.config import QuantizationConfig
from medtune.eval.adapter_check import load_adapter, probe_logits
from medtune.export import check
from medtune.export.cli import main
from medtune.export.merge import merge_adapter
from medtune.export.source import resolve_source
from medtune.models.build import build_model


@pytest.fixture(autouse=True)
def few_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check, "QUESTIONS_PER_LANGUAGE", 2)


SEED = 3  # not ExportSource's default (0): a resolver that dropped the run's seed would build another base


def _evaluated_logits(run: Path, quant: str) -> torch.Tensor:
    """Probe logits of the adapter on the base as the run evaluated it (rebuilt the way medtune.evaluate does)."""
    source = resolve_source(run)
    torch.manual_seed(SEED)
    base, tokenizer = build_model(source.model_cfg, QuantizationConfig(method=quant), torch.device("cpu"))
    return probe_logits(load_adapter(base, str(run / "adapter")), tokenizer)


def test_merged_model_is_the_evaluated_one(tmp_path: Path) -> None:
    run = make_run(tmp_path, "tiny_llama", seed=SEED)
    merged = merge_adapter(resolve_source(run))
    assert merged.adapter_logit_change > 0.1 and merged.merge_logit_delta < 1e-4
    assert not any(hasattr(m, "lora_A") for m in merged.model.modules())  # plain transformers modules
    evaluated = _evaluated_logits(run, "none")
    assert torch.allclose(probe_logits(merged.model, merged.tokenizer), evaluated, atol=1e-4)


def test_nf4_base_is_dequantised_not_reloaded(tmp_path: Path) -> None:
    run = make_run(tmp_path, "tiny_llama", quant="nf4", seed=SEED)
    merged = merge_adapter(resolve_source(run))
    assert all(p.dtype == torch.float32 for p in merged.model.parameters())
    mine = probe_logits(merged.model, merged.tokenizer)
    evaluated = _evaluated_logits(run, "nf4")  # nf4 weights, bf16 compute: what the run scored
    # the unquantised weights + the same adapter: what reloading the checkpoint before merging would give
    source = resolve_source(run)
    torch.manual_seed(SEED)
    cfg = dataclasses.replace(source.run_cfg.model, dtype="bfloat16")
    plain, tokenizer = build_model(cfg, QuantizationConfig(method="none"), torch.device("cpu"))
    # a random base built unquantised draws other weights than the nf4 one: the identity check would refuse it
    reloaded = probe_logits(load_adapter(plain.float(), str(run / "adapter"), base_mismatch_ok=True), tokenizer)
    gap_evaluated = float((mine - evaluated).abs().max())
    gap_reloaded = float((reloaded - evaluated).abs().max())
    assert gap_evaluated < gap_reloaded / 3, (gap_evaluated, gap_reloaded)


def test_nf4_run_exports_and_passes(tmp_path: Path) -> None:
    run = make_run(tmp_path, "tiny_llama", quant="nf4")
    assert main([str(run), "--format", "safetensors"]) == 0
    record = json.loads((run / "export" / "safetensors" / "export_check.json").read_text())
    assert record["passed"] and record["weight_type"] == "bfloat16"  # the run's model.dtype
    card = (run / "export" / "safetensors" / "README.md").read_text()
    assert "merged into the base after dequantising its nf4 weights" in card
