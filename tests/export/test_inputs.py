"""Bad input to python -m medtune.export: one line naming the path or argument and the fix, exit code 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from fixtures.export_run import make_run

from medtune.export import check, exporter
from medtune.export.cli import main
from medtune.export.source import resolve_source


@pytest.fixture(autouse=True)
def few_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check, "QUESTIONS_PER_LANGUAGE", 2)


def _exit_and_message(argv: list[str], caplog: pytest.LogCaptureFixture) -> tuple[int, str]:
    caplog.clear()
    code = main(argv)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    return code, errors[-1] if errors else ""


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return make_run(tmp_path, "tiny_llama")


def test_run_without_adapter(run: Path, caplog: pytest.LogCaptureFixture) -> None:
    shutil.rmtree(run / "adapter")
    code, message = _exit_and_message([str(run)], caplog)
    assert code == 2
    assert f"run {run} has no adapter" in message and "adapter_config.json is missing" in message
    assert "train it first, or pass an adapter directory" in message and "\n" not in message


def test_path_that_is_neither_run_nor_adapter(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert _exit_and_message([str(tmp_path / "nope")], caplog) == (
        2,
        f"{tmp_path / 'nope'} does not exist; pass a run directory (with adapter/) or an adapter directory.",
    )
    code, message = _exit_and_message([str(tmp_path)], caplog)
    assert code == 2 and "neither a run directory" in message


def test_adapter_whose_base_is_not_available_offline(run: Path, caplog: pytest.LogCaptureFixture) -> None:
    adapter = run.parent / "lonely_adapter"
    shutil.copytree(run / "adapter", adapter)  # no config.yaml next to it: the base is what the adapter names
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "example-org/not-downloaded-model"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    code, message = _exit_and_message([str(adapter)], caplog)
    assert code == 2
    assert "'example-org/not-downloaded-model'" in message and "cannot be found offline" in message
    assert "hf download example-org/not-downloaded-model --local-dir DIR" in message and "--base DIR" in message


def test_base_override_that_does_not_exist(run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    code, message = _exit_and_message([str(run), "--base", str(tmp_path / "missing")], caplog)
    assert code == 2 and "(--base) cannot be found offline" in message


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--format", "onnx"], "--format onnx: use one or more of safetensors, gguf."),
        (["--format", "gguf", "--quant", "q4_k"], "--quant q4_k: use one of f16, q8_0 (GGUF weight types)."),
        (["--format", "safetensors", "--quant", "q8_0"], "--quant q8_0 applies to GGUF only"),
    ],
)
def test_unknown_format_or_quant(run: Path, argv: list[str], expected: str, caplog: pytest.LogCaptureFixture) -> None:
    code, message = _exit_and_message([str(run), *argv], caplog)
    assert code == 2 and message.startswith(expected)
    assert not (run / "export").exists()  # refused before anything was written


def test_too_little_disk_space(run: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(exporter, "free_bytes", lambda path: 500 * 2**10)
    code, message = _exit_and_message([str(run), "--format", "safetensors,gguf"], caplog)
    assert code == 2
    assert f"not enough disk space in {run / 'export'}: the export needs about" in message
    assert "(safetensors 625.2 KiB + gguf 353.2 KiB), 500.0 KiB is free" in message and "--out DIR" in message
    assert not any((run / "export").glob("*"))


@pytest.mark.parametrize(("fmt", "quant"), [("safetensors", "f16"), ("gguf", "f16"), ("gguf", "q8_0")])
def test_the_space_estimate_is_within_2x_of_what_is_written(run: Path, fmt: str, quant: str) -> None:
    """Issue 32, item 8: the estimate was about 150x the tiny model's export (a fixed 64 MiB for the tokenizer)."""
    import yaml

    from medtune.config import ModelConfig
    from medtune.export import writers

    model_cfg = ModelConfig(**yaml.safe_load((run / "config.yaml").read_text())["model"])
    estimate = writers.estimate_bytes(model_cfg, fmt, quant)
    assert main([str(run), "--format", fmt, "--quant", quant, "--no-check"]) == 0
    written = sum(p.stat().st_size for p in (run / "export").rglob("*") if p.is_file())
    assert written / 2 <= estimate <= 2 * written, (estimate, written)


def test_existing_output_is_refused_unless_overwrite(run: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert main([str(run), "--format", "gguf"]) == 0
    target = run / "export" / "gguf-f16"
    stamp = (target / "export_check.json").stat().st_mtime_ns
    code, message = _exit_and_message([str(run), "--format", "gguf"], caplog)
    assert (code, message) == (2, f"{target} already exists; pass --overwrite to replace it, or --out DIR.")
    assert (target / "export_check.json").stat().st_mtime_ns == stamp
    assert main([str(run), "--format", "gguf", "--overwrite"]) == 0
    assert (target / "export_check.json").stat().st_mtime_ns != stamp


def test_gemma3_that_llama_cpp_would_run_differently(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = make_run(tmp_path, "tiny_gemma3")  # layers alternate sliding/global: llama.cpp assumes 5 sliding, 1 global
    code, message = _exit_and_message([str(run), "--format", "gguf"], caplog)
    assert code == 2
    assert "cannot be exported to GGUF: llama.cpp would run it differently" in message
    assert "not llama.cpp's fixed pattern" in message and "--format safetensors" in message


def test_architecture_other_than_gemma3_or_llama(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = make_run(tmp_path, "tiny_llama")
    arch = Path(__import__("yaml").safe_load((run / "config.yaml").read_text())["model"]["arch"])
    spec = json.loads(arch.read_text()) | {"model_type": "mistral"}
    arch.write_text(json.dumps(spec))
    code, message = _exit_and_message([str(run)], caplog)
    assert code == 2
    assert message == "the base is a 'mistral' model; medtune exports Gemma 3 (text) and Llama models only."


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("truncated safetensors", "SafetensorError"),
        ("garbage safetensors", "SafetensorError"),
        ("another rank", "RuntimeError: Error(s) in loading state_dict"),
    ],
)
def test_damaged_adapter_is_one_line_naming_it(
    run: Path, damage: str, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 32, item 8: a truncated or garbage adapter, or one whose config names another rank, was a traceback."""
    weights = run / "adapter" / "adapter_model.safetensors"
    if damage == "truncated safetensors":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garbage safetensors":
        weights.write_bytes(b"not a safetensors file at all" * 10)
    else:
        config = json.loads((run / "adapter" / "adapter_config.json").read_text())
        (run / "adapter" / "adapter_config.json").write_text(json.dumps(config | {"r": 8, "lora_alpha": 16}))
    code, message = _exit_and_message([str(run), "--format", "safetensors", "--no-check"], caplog)
    assert code == 2, message
    assert f"the adapter in {run / 'adapter'} cannot be loaded" in message and expected in message
    assert "copy the adapter again" in message and "\n" not in message


def test_broken_adapter_config_is_one_line_naming_it(run: Path, caplog: pytest.LogCaptureFixture) -> None:
    (run / "adapter" / "adapter_config.json").write_text('{"r": 4, "lora_al')
    code, message = _exit_and_message([str(run), "--format", "safetensors", "--no-check"], caplog)
    assert code == 2 and f"{run / 'adapter' / 'adapter_config.json'} is not valid JSON" in message
    assert "\n" not in message


def test_out_that_is_a_file_is_refused_before_merging(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 32, item 8: --out at a file failed with a traceback after the whole merge (23 s on the 270M)."""
    merged = []
    monkeypatch.setattr(exporter, "merge_adapter", lambda *a: merged.append(1))
    (tmp_path / "a_file").write_text("")
    for out in (tmp_path / "a_file", tmp_path / "a_file" / "below"):
        code, message = _exit_and_message([str(run), "--format", "safetensors", "--out", str(out)], caplog)
        assert code == 2 and message == f"--out {out}: {tmp_path / 'a_file'} is a file, not a folder; pass --out DIR."
    assert merged == []


def test_run_config_the_schema_cannot_read_is_one_line_naming_file_and_key(
    run: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["dtpye"] = "float32"  # a key no medtune ever wrote (not in MIGRATIONS either)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    code, message = _exit_and_message([str(run), "--format", "safetensors", "--no-check"], caplog)
    assert code == 2 and message.startswith(f"{run / 'config.yaml'}: model.dtpye: Key 'dtpye' not in 'ModelConfig'")
    assert "--base DIR" in message and "\n" not in message


def test_base_override_leaves_the_runs_recorded_config_alone(run: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "llama"}))
    source = resolve_source(run, base=str(base))
    assert (source.model_cfg.source, source.model_cfg.path) == ("hf", str(base))
    assert source.run_cfg is not None and source.run_cfg.model.source == "builtin" and source.run_cfg.model.path is None
