"""The model card's facts: base and dataset licenses from what the repository and the data README say, else unknown."""

from __future__ import annotations

from pathlib import Path

import pytest

from medtune.config import ModelConfig, QuantizationConfig
from medtune.export.card import base_license, base_license_terms, dataset_license, modelfile
from medtune.export.source import ExportSource

DATA_README = """# Medical QA data
| folder | what | language | records | upstream id / license |
|---|---|---|---|---|
| `kormedmcqa/{doctor,nurse}/{train,test}.csv` | Korean exams | ko | 3401 | `sean0042/KorMedMCQA`; CC-BY-NC-2.0 |
| `genmedgpt5k_ko/GenMedGPT-5k-ko.csv` | dialogues | ko | 5451 | `ChuGyouk/GenMedGPT-5k-ko`; not stated |
"""


def _source(**model: object) -> ExportSource:
    cfg = ModelConfig(**{"name": "m", "source": "hf", "path": "org/m", **model})
    return ExportSource(Path("adapter"), None, cfg, QuantizationConfig())


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ({"name": "gemma3_270m", "source": "gguf", "path": None}, ("gemma", "Gemma Terms of Use")),
        ({"name": "medgemma_4b", "path": "google/medgemma-4b-it"},
         ("health-ai-developer-foundations", "Health AI Developer Foundations Terms of Use")),
        ({"name": "llama3_3_70b", "path": "meta-llama/Llama-3.3-70B-Instruct"},
         ("llama3.3", "Llama 3.3 Community License")),
        ({"name": "tiny", "source": "builtin", "path": None, "arch": "tiny_llama", "init": "random"},
         ("", "none: random")),
        ({"name": "qwen", "path": "Qwen/Qwen2-0.5B"}, ("", "unknown")),
    ],
)  # fmt: skip
def test_base_license(model: dict, expected: tuple[str, str]) -> None:
    """The card's text and the GGUF's general.license id come from one table (a random-weight base has neither)."""
    short, text = base_license_terms(_source(**model))
    assert short == expected[0] and text.startswith(expected[1]) and base_license(_source(**model)) == text


def test_dataset_licenses_come_from_the_readmes(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(DATA_README)
    assert dataset_license("kormedmcqa:train", readme) == "CC-BY-NC-2.0"
    assert dataset_license("genmedgpt_ko:train", readme) == "not stated"
    assert dataset_license("medquad:train", readme) == "unknown"  # no row for it: never guessed
    assert dataset_license("medquad:train", None) == "unknown"
    assert dataset_license("no_such_source:train", readme) == "unknown"
    assert dataset_license("sample_ko:train", None) == "Apache-2.0"  # medtune/data/sample/README.md
    declared = {"ja_exam": {"format": "mcq", "license": "internal, de-identified"}, "ja_notes": {"format": "qa"}}
    assert dataset_license("ja_exam:train", readme, declared) == "internal, de-identified"
    assert dataset_license("ja_notes:train", readme, declared) == "not stated (data.datasets.ja_notes.license)"


def test_modelfile_passes_plain_prompts_through_and_carries_the_license() -> None:
    gemma = base_license(_source(name="gemma3_270m", source="gguf", path=None))
    plain = modelfile("m-f16.gguf", chat_template=False, license_text=gemma)
    assert 'TEMPLATE """{{ .Prompt }}"""' in plain
    assert 'LICENSE """Gemma Terms of Use (https://ai.google.dev/gemma/terms)"""' in plain
    chat = modelfile("m-f16.gguf", chat_template=True, license_text="unknown")
    assert "FROM ./m-f16.gguf" in chat and "TEMPLATE" not in chat  # Ollama takes the GGUF's chat template
    assert 'LICENSE """unknown"""' in chat
