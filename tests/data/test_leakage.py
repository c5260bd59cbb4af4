"""Leakage guard: normalisation, exact and near duplicates, the training-load filter, and its speed."""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

from conftest import FIXTURES as TEST_FIXTURES

from medtune.config import DataConfig
from medtune.data import load_records
from medtune.data.leakage import DupIndex, key_text, normalize
from medtune.data.schema import Record, mcq, open_qa

FIXTURES = TEST_FIXTURES / "data"


def q(text: str, choices: list[str], native_id: str = "1", split: str = "test") -> Record:
    return mcq("t", split, native_id, "en", "s", text, choices, 0)


def test_normalize_nfkc_casefold_punctuation_whitespace() -> None:
    assert normalize("Ｗｈｉｃｈ  Drug?!\n") == normalize("which drug") == "whichdrug"
    assert normalize("「의료법」상 의료인은?") == "의료법상의료인은"


def test_exact_duplicate_with_reordered_options_and_spacing() -> None:
    index = DupIndex([q("Which nerve supplies the diaphragm?", ["Phrenic", "Vagus", "Accessory"])])
    (hit,) = index.match([q("which nerve  supplies the DIAPHRAGM", ["Accessory", "phrenic", "Vagus"], "9", "train")])
    assert hit.kind == "exact" and hit.eval_id == "t:test:1" and hit.train_id == "t:train:9"
    assert key_text(q("A?", ["x", "y"])) == "a|x|y"


def test_near_duplicate_found_and_unrelated_or_different_options_kept() -> None:
    stem = (
        "A 67-year-old woman has had progressive shortness of breath on exertion for six months, ankle swelling "
        "and orthopnea. Echocardiography shows an ejection fraction of 30 percent. Which drug lowers mortality?"
    )
    choices = ["Digoxin", "Furosemide", "Bisoprolol", "Amlodipine"]
    index = DupIndex([q(stem, choices)], threshold=0.9)
    near = q(stem.replace("67-year-old", "68-year-old"), choices, "2", "train")
    other = q("Which vitamin deficiency causes scurvy?", ["A", "C", "D", "K"], "3", "train")
    new_options = q(stem, ["Aspirin", "Insulin", "Warfarin", "Levothyroxine"], "4", "train")
    hits = {h.train_id: h for h in index.match([near, other, new_options])}
    assert hits["t:train:2"].kind == "near" and 0.9 <= hits["t:train:2"].jaccard < 1.0
    assert "t:train:3" not in hits and "t:train:4" not in hits


def test_open_questions_compare_on_the_question() -> None:
    index = DupIndex([open_qa("e", "test", "1", "en", "s", "What is anemia?", "low hemoglobin")])
    (hit,) = index.match([open_qa("m", "train", "1", "en", "s", "what is ANEMIA", "a different answer")])
    assert hit.kind == "exact"


def test_training_loads_drop_eval_duplicates_and_report_them(tmp_path: Path) -> None:
    data = tmp_path / "raw"
    shutil.copytree(FIXTURES, data)
    cfg = DataConfig(data_dir=str(data), cache_dir=str(tmp_path / "cache"))
    report: dict = {}
    medqa = load_records("medqa_4opt", "dev", cfg, report=report)  # dev q1 = test q1 but one spelling
    assert [r.question for r in medqa] == ["Which organ produces bile?"]
    assert report["data/medqa_4opt:dev/dropped_near"] == 1 and report["data/medqa_4opt:dev/kept"] == 1
    medmcqa = load_records("medmcqa", "dev", cfg, report=report)  # mm-2 = an MMLU test question, options reordered
    assert [r.id for r in medmcqa] == ["medmcqa:dev:mm-1"] and report["data/medmcqa:dev/dropped_exact"] == 1
    off = DataConfig(data_dir=str(data), cache_dir=str(tmp_path / "cache"), exclude_eval_overlap=False)
    assert len(load_records("medqa_4opt", "dev", off)) == 2
    assert len(load_records("medqa_4opt", "test", cfg)) == 2  # eval data itself is untouched


def test_thirty_thousand_questions_take_seconds() -> None:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]

    def sentence(i: int, split: str) -> Record:
        text = " ".join(rng.choice(words) for _ in range(25))
        return q(text, [rng.choice(words) for _ in range(4)], str(i), split)

    evals = [sentence(i, "test") for i in range(20000)]
    trains = [sentence(i, "train") for i in range(10000)]
    trains[0] = q(evals[5].question + " x", list(evals[5].choices), "0", "train")  # one planted near duplicate
    start_s = time.perf_counter()
    hits = DupIndex(evals).match(trains)
    elapsed_s = time.perf_counter() - start_s
    assert [(h.train_id, h.eval_id, h.kind) for h in hits] == [("t:train:0", "t:test:5", "near")]
    assert elapsed_s < 30, f"leakage check of 30k questions took {elapsed_s:.1f} s"
