"""The model card's facts: base and dataset licenses from what the repository and the data README say, else unknown."""

from __future__ import annotations

from pathlib import Path

import pytest

from medtune.config import DatasetConfig, ModelConfig, QuantizationConfig
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
    declared = {"ja_exam": DatasetConfig(format="mcq", license="internal, de-identified"), "ja_notes": DatasetConfig()}
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


def test_the_card_states_the_trained_mix_beside_the_planned_one() -> None:
    """A 4-step run that took 4 of 7 micro-batches: the card gives the trained rows and tokens, not only the plan."""
    from medtune.export.card import trained_section

    summary = {"data_mix/unit": "tokens", "data_mix/languages": "en,vi"}
    for lang, planned, trained in (("en", 900, 500), ("vi", 300, 100)):
        for key in ("", f"/{lang}_exam:train"):
            summary |= {f"data_mix/{lang}{key}/examples": planned // 10, f"data_mix/{lang}{key}/tokens": planned}
            summary |= {f"trained_mix/{lang}{key}/examples": trained // 10, f"trained_mix/{lang}{key}/tokens": trained}
            summary[f"data_mix/{lang}{key}/share_tokens"] = planned / 1200
    summary |= {"trained_mix/tokens": 600, "trained_mix/passes": 4 / 7, "trained_mix/micro_batches": 4}
    text = "\n".join(trained_section(summary))
    assert "### Trained mix" in text and "4 micro-batches, 0.571 passes" in text and "not those of the plan" in text
    assert "| vi | all | 30 | 10 | 300 | 100 | 0.2500 | 0.1667 |" in text
    assert "| en | en_exam:train | 90 | 50 | 900 | 500 | 0.7500 | 0.8333 |" in text
    assert trained_section({"data_mix/unit": "tokens"}) == []  # a run recorded before trained_mix existed
