"""English sources: MedQA (4/5 options), MedMCQA, PubMedQA (PQA-L), MMLU, ChatDoctor GenMedGPT-5k, MedQuAD.

Quirks handled here, once: MedMCQA `cop` is 1-based in the release file (0-based on the hub); MedQA options are a
letter-keyed dict; PubMedQA's official test is the 500 PMIDs of test_ground_truth.json (train = the other 500);
MMLU CSVs have no header (question, A, B, C, D, answer letter) and the subject is in the file name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtune.data.schema import LETTERS, Record, RowError, RowSink, int_index, letter_index, mcq, open_qa, text_field
from medtune.data.sources.readers import iter_csv, iter_jsonl, read_json

MEDQA_SPLITS = ("dev", "test")
MMLU_SPLITS = ("dev", "val", "test")
PUBMEDQA_CHOICES = ("yes", "no", "maybe")
# MultiMedQA's six MMLU subjects: 1089 test questions
MMLU_MEDICAL = (
    "anatomy",
    "clinical_knowledge",
    "college_biology",
    "college_medicine",
    "medical_genetics",
    "professional_medicine",
)
# Health-adjacent subjects, kept out of the general-knowledge (forgetting) probe
MMLU_HEALTH_ADJACENT = (
    "high_school_biology",
    "high_school_psychology",
    "human_aging",
    "human_sexuality",
    "nutrition",
    "professional_psychology",
    "virology",
)


def medqa_record(row: dict[str, Any], source: str, split: str, native_id: str) -> Record:
    """A MedQA row (question, options {A..}, answer_idx letter, answer text, meta_info) -> Record."""
    options = row.get("options")
    if not isinstance(options, dict) or not options:
        raise RowError("options", "missing or not a letter -> text mapping")
    letters = sorted(options)
    if "".join(letters) != LETTERS[: len(letters)]:
        raise RowError("options", f"keys {letters} are not consecutive letters from A")
    choices = [text_field(options, letter) for letter in letters]
    answer = letter_index(text_field(row, "answer_idx"), len(choices), key="answer_idx")
    if "answer" in row and str(row["answer"]).strip() != choices[answer]:
        raise RowError("answer", f"{row['answer']!r} differs from options[{LETTERS[answer]}]={choices[answer]!r}")
    subject = str(row.get("meta_info") or "usmle")
    return mcq(source, split, native_id, "en", subject, text_field(row, "question"), choices, answer)


def _medqa_reader(n_options: int):
    source = f"medqa_{n_options}opt"

    def read(data_dir: Path, split: str, sink: RowSink) -> None:
        path = data_dir / "medqa" / f"{n_options}_options" / f"{split}.jsonl"
        for line, row in iter_jsonl(path, sink):
            sink.add(f"{path}:{line}", medqa_record, row, source, split, str(line))

    read.__doc__ = f"medqa/{n_options}_options/<split>.jsonl."
    return read


read_medqa_4opt = _medqa_reader(4)
read_medqa_5opt = _medqa_reader(5)


def medmcqa_record(row: dict[str, Any], split: str, cop_base: int) -> Record:
    """A MedMCQA row (question, opa..opd, cop) -> Record; cop_base=1 for the release file, 0 for the hub."""
    choices = [text_field(row, key) for key in ("opa", "opb", "opc", "opd")]
    answer = int_index(text_field(row, "cop"), len(choices), base=cop_base, key="cop")
    subject = str(row.get("subject_name") or "medicine")
    native_id = text_field(row, "id")
    return mcq("medmcqa", split, native_id, "en", subject, text_field(row, "question"), choices, answer)


def read_medmcqa(data_dir: Path, split: str, sink: RowSink) -> None:
    """medmcqa/<split>.jsonl (JSON Lines; cop 1-based)."""
    path = data_dir / "medmcqa" / f"{split}.jsonl"
    for line, row in iter_jsonl(path, sink):
        sink.add(f"{path}:{line}", medmcqa_record, row, split, 1)


def pubmedqa_record(row: dict[str, Any], split: str, native_id: str) -> Record:
    """A PQA-L entry (QUESTION, CONTEXTS list, final_decision) -> Record; the abstract becomes the context."""
    contexts = row.get("CONTEXTS")
    if not isinstance(contexts, list | tuple) or not contexts:
        raise RowError("CONTEXTS", "missing or not a list of abstract sections")
    context = "\n".join(text_field({"CONTEXTS": part}, "CONTEXTS") for part in contexts)
    decision = text_field(row, "final_decision").lower()
    if decision not in PUBMEDQA_CHOICES:
        raise RowError("final_decision", f"{decision!r} is not one of {list(PUBMEDQA_CHOICES)}")
    answer = PUBMEDQA_CHOICES.index(decision)
    question = text_field(row, "QUESTION")
    return mcq(
        "pubmedqa", split, native_id, "en", "biomedical_research", question, list(PUBMEDQA_CHOICES), answer, context
    )


def read_pubmedqa(data_dir: Path, split: str, sink: RowSink) -> None:
    """pubmedqa/ori_pqal.json split by test_ground_truth.json: test = its 500 PMIDs, train = the other 500."""
    path = data_dir / "pubmedqa" / "ori_pqal.json"
    entries = read_json(path)
    test_ids = set(read_json(data_dir / "pubmedqa" / "test_ground_truth.json"))
    for pmid, row in entries.items():
        if (pmid in test_ids) != (split == "test"):
            continue
        if not isinstance(row, dict):
            sink.bad(f"{path}: PMID {pmid}", "<entry>", "not a JSON object")
            continue
        sink.add(f"{path}: PMID {pmid}", pubmedqa_record, row, split, pmid)


def mmlu_record(cells: list[str], split: str, subject: str, native_id: str) -> Record:
    """An MMLU CSV row [question, A, B, C, D, answer letter] -> Record."""
    if len(cells) != 6:
        raise RowError("<row>", f"{len(cells)} columns, expected 6 (question, A, B, C, D, answer)")
    row = dict(zip(["question", "A", "B", "C", "D", "answer"], cells, strict=True))
    choices = [text_field(row, letter) for letter in LETTERS[:4]]
    answer = letter_index(text_field(row, "answer"), len(choices))
    return mcq("mmlu", split, native_id, "en", subject, text_field(row, "question"), choices, answer)


def mmlu_subjects(data_dir: Path, split: str) -> list[str]:
    """The subjects present in mmlu/<split>/ (from the file names)."""
    suffix = f"_{split}.csv"
    return sorted(p.name.removesuffix(suffix) for p in (data_dir / "mmlu" / split).glob(f"*{suffix}"))


def read_mmlu(data_dir: Path, split: str, sink: RowSink) -> None:
    """mmlu/<split>/<subject>_<split>.csv, all subjects (no header row)."""
    subjects = mmlu_subjects(data_dir, split)
    if not subjects:
        raise FileNotFoundError(f"no MMLU files under {data_dir / 'mmlu' / split}; expected <subject>_{split}.csv")
    for subject in subjects:
        path = data_dir / "mmlu" / split / f"{subject}_{split}.csv"
        for index, (line, cells) in enumerate(iter_csv(path, header=False)):
            sink.add(f"{path}:{line}", mmlu_record, cells, split, subject, f"{subject}-{index}")


def read_chatdoctor_en(data_dir: Path, split: str, sink: RowSink) -> None:
    """chatdoctor5k_en/chatdoctor5k.json, a list of {instruction, input, output}; one split, train."""
    path = data_dir / "chatdoctor5k_en" / "chatdoctor5k.json"
    items = read_json(path)
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of {{instruction, input, output}} objects.")
    for index, row in enumerate(items):
        if not isinstance(row, dict):
            sink.bad(f"{path}: item {index}", "<item>", "not a JSON object")
            continue
        sink.add(f"{path}: item {index}", _dialogue, row, "chatdoctor_en", str(index))


def _dialogue(row: dict[str, Any], source: str, native_id: str) -> Record:
    return open_qa(source, "train", native_id, "en", "dialogue", text_field(row, "input"), text_field(row, "output"))


def medquad_record(row: dict[str, Any], native_id: str) -> Record:
    """A MedQuAD row (question, answer, qtype) -> open-QA Record (its qids repeat, so the line is the id)."""
    subject = str(row.get("qtype") or "information")
    return open_qa("medquad", "train", native_id, "en", subject, text_field(row, "question"), text_field(row, "answer"))


def read_medquad(data_dir: Path, split: str, sink: RowSink) -> None:
    """medquad/medquad.jsonl; one split, train."""
    path = data_dir / "medquad" / "medquad.jsonl"
    for line, row in iter_jsonl(path, sink):
        sink.add(f"{path}:{line}", medquad_record, row, str(line))
