"""Loading the same sources from the Hugging Face hub by id, with the hub's own quirks.

The hub copies differ from the release files: KorMedMCQA answers are integers 1-5 and its validation split is
'dev'; MedMCQA `cop` is 0-based; MedQA (GBaker) has sent1/ending0-3/label; MMLU has a `choices` list and a 0-based
`answer`; PubMedQA (bigbio, fold 0) splits PQA-L into train 450 / validation 50 / test 500.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from medtune.data.schema import Record, RowError, RowSink, int_index, mcq, text_field
from medtune.data.sources.english import medmcqa_record, pubmedqa_record
from medtune.data.sources.korean import KORMED_SUBJECTS, kmmlu_record, kormed_record

HubReader = Callable[[str, RowSink], None]

HUB_IDS = {
    "kormedmcqa": "sean0042/KorMedMCQA",
    "medqa_4opt": "GBaker/MedQA-USMLE-4-options-hf",
    "medmcqa": "openlifescienceai/medmcqa",
    "pubmedqa": "bigbio/pubmed_qa",
    "mmlu": "cais/mmlu",
    "kmmlu_criminal_law": "HAERAE-HUB/KMMLU",
}
# our split name -> the hub's split names (concatenated)
SPLIT_MAP = {
    "kormedmcqa": {"valid": ["dev"]},
    "medqa_4opt": {"dev": ["validation"]},
    "medmcqa": {"dev": ["validation"]},
    "pubmedqa": {"train": ["train", "validation"]},
    "mmlu": {"val": ["validation"]},
}


def hub_rows(source: str, config: str | None, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, row) for every hub row of our `split` (the hub split names mapped per source)."""
    import datasets  # the boundary mocked in tests; imported late because it is slow to import

    path = HUB_IDS[source]
    for hub_split in SPLIT_MAP.get(source, {}).get(split, [split]):
        dataset = datasets.load_dataset(path, config, split=hub_split)
        for index, row in enumerate(dataset):
            yield f"hub {path}{'/' + config if config else ''} [{hub_split}] row {index}", dict(row)


def _kormedmcqa(split: str, sink: RowSink) -> None:
    for subject in KORMED_SUBJECTS:
        for location, row in hub_rows("kormedmcqa", subject, split):
            sink.add(location, kormed_record, row, "kormedmcqa", split, subject)


def _medqa_record(row: dict[str, Any], split: str, native_id: str) -> Record:
    choices = [text_field(row, f"ending{i}") for i in range(4)]
    answer = int_index(text_field(row, "label"), len(choices), base=0, key="label")
    return mcq("medqa_4opt", split, native_id, "en", "usmle", text_field(row, "sent1"), choices, answer)


def _medqa_4opt(split: str, sink: RowSink) -> None:
    for index, (location, row) in enumerate(hub_rows("medqa_4opt", None, split)):
        sink.add(location, _medqa_record, row, split, str(row.get("id", index)))


def _medmcqa(split: str, sink: RowSink) -> None:
    for location, row in hub_rows("medmcqa", None, split):
        sink.add(location, medmcqa_record, row, split, 0)


def _pubmedqa(split: str, sink: RowSink) -> None:
    for index, (location, row) in enumerate(hub_rows("pubmedqa", "pubmed_qa_labeled_fold0_source", split)):
        native_id = str(row.get("pubid") or row.get("PUBMED_ID") or index)
        sink.add(location, pubmedqa_record, row, split, native_id)


def _mmlu_record(row: dict[str, Any], split: str, index: int) -> Record:
    choices_raw = row.get("choices")
    if not isinstance(choices_raw, list | tuple) or len(choices_raw) != 4:
        raise RowError("choices", "missing or not a list of 4 options")
    choices = [text_field({f"choices[{i}]": c}, f"choices[{i}]") for i, c in enumerate(choices_raw)]
    answer = int_index(text_field(row, "answer"), 4, base=0)
    subject = text_field(row, "subject")
    return mcq("mmlu", split, f"{subject}-{index}", "en", subject, text_field(row, "question"), choices, answer)


def _mmlu(split: str, sink: RowSink) -> None:
    per_subject: dict[str, int] = {}
    for location, row in hub_rows("mmlu", "all", split):
        subject = str(row.get("subject"))
        index = per_subject.get(subject, 0)  # the same per-subject row numbering as the local adapter
        per_subject[subject] = index + 1
        sink.add(location, _mmlu_record, row, split, index)


def _kmmlu(split: str, sink: RowSink) -> None:
    for index, (location, row) in enumerate(hub_rows("kmmlu_criminal_law", "Criminal-Law", split)):
        sink.add(location, kmmlu_record, row, split, str(index))


HUB_READERS: dict[str, HubReader] = {
    "kormedmcqa": _kormedmcqa,
    "medqa_4opt": _medqa_4opt,
    "medmcqa": _medmcqa,
    "pubmedqa": _pubmedqa,
    "mmlu": _mmlu,
    "kmmlu_criminal_law": _kmmlu,
}
