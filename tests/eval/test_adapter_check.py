"""An adapter is applied only to the base it records: evaluate and export refuse another one in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from fixtures.export_run import make_run

from medtune.export.cli import main as export_main


def _evaluate(tmp_path: Path, adapter: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "medtune.evaluate", "trainer.device=cpu", "eval=demo", "eval.limit=2",
           "eval.compare_base=false", "logger=jsonl", f"eval.adapter={adapter}", f"hydra.run.dir={tmp_path / 'ev'}",
           *overrides]  # fmt: skip
    env = {**os.environ, "MEDTUNE_CACHE_DIR": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_evaluate_refuses_a_tiny_llama_adapter_on_gemma_unless_told(tmp_path: Path) -> None:
    """Issue 32, item 6: it ran to completion with accuracy and forgetting reported."""
    adapter = make_run(tmp_path, "tiny_llama") / "adapter"
    identity = json.loads((adapter / "base_identity.json").read_text())
    assert identity["architecture"]["model_type"] == "llama" and identity["quantization"] == "none"
    refused = _evaluate(tmp_path, adapter, "model=tiny_gemma3")
    out = refused.stdout + refused.stderr
    assert refused.returncode == 2, out[-3000:]
    errors = [line for line in out.splitlines() if "trained on another base" in line]
    assert len(errors) == 1 and "model_type llama vs gemma3_text" in errors[0], out[-3000:]
    assert "eval.base_mismatch_ok=true" in errors[0] and "Traceback" not in out
    assert not (tmp_path / "ev" / "eval" / "metrics.json").exists()
    allowed = _evaluate(tmp_path, adapter, "model=tiny_gemma3", "eval.base_mismatch_ok=true", "eval.sanity=off")
    assert allowed.returncode == 0, (allowed.stdout + allowed.stderr)[-3000:]
    assert "applied anyway (eval.base_mismatch_ok=true)" in allowed.stdout + allowed.stderr


def test_export_refuses_another_seeds_random_base_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    run = make_run(tmp_path, "tiny_llama", seed=0)
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump(config | {"seed": 3}))  # the base is rebuilt with seed 3
    assert export_main([str(run), "--format", "safetensors", "--no-check"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "trained on another base than this model: other weights" in errors[0]
    assert "--base-mismatch-ok" in errors[0] and "\n" not in errors[0]
    assert not (run / "export").exists()
    code = export_main([str(run), "--format", "safetensors", "--no-check", "--base-mismatch-ok"])
    assert code == 0 and (run / "export" / "safetensors").is_dir()


def test_a_garbage_adapter_is_an_adapter_file_error_naming_it(tmp_path: Path) -> None:
    """Issue 32, item 8: medtune.evaluate printed safetensors' traceback; AdapterFileError is its exit 2 line."""
    import torch

    from medtune.config import ModelConfig, QuantizationConfig
    from medtune.eval.adapter_check import AdapterFileError, load_adapter
    from medtune.models.build import build_model

    run = make_run(tmp_path, "tiny_llama")
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"garbage" * 50)
    config = yaml.safe_load((run / "config.yaml").read_text())
    torch.manual_seed(0)
    model, _ = build_model(ModelConfig(**config["model"]), QuantizationConfig(), torch.device("cpu"))
    with pytest.raises(AdapterFileError, match=r"the adapter in .*adapter cannot be loaded onto this model \(Safet"):
        load_adapter(model, str(run / "adapter"))


def test_nan_lora_weights_are_named_not_called_untrained(tmp_path: Path) -> None:
    """Issue 32, item 8: an adapter whose weights went NaN was reported as 'untrained (LoRA B = 0)'."""
    import torch

    from medtune.config import ModelConfig, QuantizationConfig
    from medtune.eval.adapter_check import AdapterInactiveError, check_adapter_active, load_adapter
    from medtune.models.build import build_model

    run = make_run(tmp_path, "tiny_llama")
    config = yaml.safe_load((run / "config.yaml").read_text())
    torch.manual_seed(0)
    base, tokenizer = build_model(ModelConfig(**config["model"]), QuantizationConfig(), torch.device("cpu"))
    model = load_adapter(base, str(run / "adapter"))
    name, param = next((n, p) for n, p in model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        param.view(-1)[:3] = float("nan")
    with pytest.raises(AdapterInactiveError) as err:
        check_adapter_active(model, tokenizer)
    message = str(err.value)
    assert "NaN/inf weights" in message and f"{name}: 3 of {param.numel()} values" in message
    assert "diverged" in message and "earlier checkpoint" in message and "untrained" not in message
