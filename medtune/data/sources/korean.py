"""Korean sources: KorMedMCQA (+ its medical-law subset), KMMLU Criminal-Law, GenMedGPT-5k-ko.

Quirks handled here, once: KorMedMCQA answers are letters A-E in train/valid/test but integers 1-5 in fewshot (and
everywhere on the hub); its CSVs start with an unnamed index column; some pharm test rows say subject 'pharmacy'.
KMMLU answers are integers 1-4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtune.data.schema import LETTERS, Record, RowSink, int_index, letter_index, mcq, open_qa, text_field
from medtune.data.sources.readers import iter_csv, iter_jsonl

KORMED_SUBJECTS = ("doctor", "nurse", "pharm", "dentist")
KORMED_SPLITS = ("train", "valid", "test", "fewshot")
LAW_SPLITS = ("train", "valid", "test")
KMMLU_SPLITS = ("dev", "train", "test")
SUBJECT_ALIASES = {"pharmacy": "pharm"}


def kormed_answer(value: Any, n_choices: int) -> int:
    """KorMedMCQA answer -> 0-based: a letter 'A'-'E' (release CSVs) or an integer 1-5 (fewshot CSV, hub)."""
    text = str(value).strip()
    if text.isdigit():
        return int_index(text, n_choices, base=1)
    return letter_index(text, n_choices)


def kormed_uid(subject: str, row: dict[str, Any]) -> str:
    """'<subject>-<year>-<period>-<q_number>': the law subset's uid, unique per exam question."""
    parts = [text_field(row, key) for key in ("year", "period", "q_number")]
    return "-".join([subject, *parts])


def is_law_block(subject: str, year: int, period: int, q_number: int) -> bool:
    """The position rule of the 보건의약관계법규 block (../shared/data/README.md), for hub data without the subset."""
    if subject == "doctor":
        return year >= 2022 and period == 1 and 1 <= q_number <= 20
    if subject == "nurse":
        return period == 3 and 66 <= q_number <= 85
    if subject == "pharm":
        return period == 4 and 64 <= q_number <= 83
    if subject == "dentist":
        return period == 4 and (76 <= q_number <= 95 if year <= 2022 else 66 <= q_number <= 85)
    return False


def kormed_record(row: dict[str, Any], source: str, split: str, subject: str) -> Record:
    """A KorMedMCQA-style row (question, A-E, answer) -> Record."""
    subject = SUBJECT_ALIASES.get(subject, subject)
    choices = [text_field(row, letter) for letter in LETTERS[:5]]
    answer = kormed_answer(text_field(row, "answer"), len(choices))
    question = text_field(row, "question")
    return mcq(source, split, kormed_uid(subject, row), "ko", subject, question, choices, answer)


def read_kormedmcqa(data_dir: Path, split: str, sink: RowSink) -> None:
    """kormedmcqa/<subject>/<split>.csv for the four subjects (the first column is an unnamed row index)."""
    for subject in KORMED_SUBJECTS:
        path = data_dir / "kormedmcqa" / subject / f"{split}.csv"
        for line, row in iter_csv(path):
            sink.add(f"{path}:{line}", kormed_record, row, "kormedmcqa", split, subject)


def law_rows(data_dir: Path, sink: RowSink) -> list[tuple[int, dict[str, Any]]]:
    """(line, row) of kormedmcqa/law_subset.jsonl."""
    return list(iter_jsonl(data_dir / "kormedmcqa" / "law_subset.jsonl", sink))


def law_uids(data_dir: Path) -> set[str]:
    """Every law row's uid (block and regex rows of every split): the rows kept out of KorMedMCQA training."""
    path = data_dir / "kormedmcqa" / "law_subset.jsonl"
    if not path.is_file():
        return set()
    return {str(row.get("uid")) for _, row in law_rows(data_dir, RowSink(on_bad_row="skip"))}


def _law_reader(block_only: bool, source: str):
    def read(data_dir: Path, split: str, sink: RowSink) -> None:
        path = data_dir / "kormedmcqa" / "law_subset.jsonl"
        for line, row in law_rows(data_dir, sink):
            if str(row.get("split")) != split:
                continue
            if block_only and "block" not in str(row.get("law_rule", "")):
                continue
            subject = SUBJECT_ALIASES.get(str(row.get("subject")), str(row.get("subject")))
            sink.add(f"{path}:{line}", kormed_record, row, source, split, subject)

    read.__doc__ = f"kormedmcqa/law_subset.jsonl rows of one split ({'block rows' if block_only else 'all rows'})."
    return read


read_kormed_law = _law_reader(block_only=True, source="kormed_law")
read_kormed_law_all = _law_reader(block_only=False, source="kormed_law_all")


def kmmlu_record(row: dict[str, Any], split: str, native_id: str) -> Record:
    """A KMMLU row (question, A-D, answer 1-4) -> Record."""
    choices = [text_field(row, letter) for letter in LETTERS[:4]]
    answer = int_index(text_field(row, "answer"), len(choices), base=1)
    question = text_field(row, "question")
    return mcq("kmmlu_criminal_law", split, native_id, "ko", "criminal_law", question, choices, answer)


def read_kmmlu_criminal_law(data_dir: Path, split: str, sink: RowSink) -> None:
    """kmmlu_criminal_law/Criminal-Law-<split>.csv."""
    path = data_dir / "kmmlu_criminal_law" / f"Criminal-Law-{split}.csv"
    for index, (line, row) in enumerate(iter_csv(path)):
        sink.add(f"{path}:{line}", kmmlu_record, row, split, str(index))


def dialogue_record(row: dict[str, Any], source: str, language: str, native_id: str) -> Record:
    """A patient/doctor pair (input, output) -> open-QA Record."""
    question = text_field(row, "input")
    answer = text_field(row, "output")
    return open_qa(source, "train", native_id, language, "dialogue", question, answer)


def read_genmedgpt_ko(data_dir: Path, split: str, sink: RowSink) -> None:
    """genmedgpt5k_ko/GenMedGPT-5k-ko.csv (input, output); one split, train."""
    path = data_dir / "genmedgpt5k_ko" / "GenMedGPT-5k-ko.csv"
    for index, (line, row) in enumerate(iter_csv(path)):
        sink.add(f"{path}:{line}", dialogue_record, row, "genmedgpt_ko", "ko", str(index))
