"""The source registry: names, languages, splits, raw files, readers (local and hub), and derived views.

A source spec is "<source>:<split>". Besides the prepared sources there are views, filtered at load time:
`kormedmcqa_<doctor|nurse|pharm|dentist>` (one KorMedMCQA subject), `mmlu_medical` (MultiMedQA's six subjects),
`mmlu_general` (the non-health subjects, the forgetting probe) and `mmlu_<subject>` (one MMLU subject).
The datasets declared in config (`data.datasets.<name>`, read by sources/user.py) are sources too:
`resolve(name, data_cfg)` and `all_sources(data_cfg)` see them next to the built-in ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from medtune.config import ConfigError
from medtune.config.checks import resolve_dir
from medtune.data.schema import Record, RowError, RowSink, letter_index, mcq, text_field
from medtune.data.sources import english as en
from medtune.data.sources import korean as ko
from medtune.data.sources.hub import HUB_READERS, hub_rows
from medtune.data.sources.readers import iter_jsonl
from medtune.data.sources.user import Declared

Reader = Callable[[Path, str, RowSink], None]


@dataclass(frozen=True)
class Source:
    """One prepared source: its language, splits, raw files (relative to data_dir) and reader."""

    name: str
    language: str
    splits: tuple[str, ...]
    files: tuple[str, ...]  # glob patterns under data_dir; the version key hashes their sizes and mtimes
    read: Reader
    builtin: bool = False  # ships inside the package (no data_dir needed)
    declared: Declared | None = None  # a dataset declared in config: read by its own rules, all splits at once


def sample_record(row: dict, language: str, split: str) -> Record:
    """A row of the built-in sample (id, split, subject, question, choices, answer letter) -> Record."""
    choices_raw = row.get("choices")
    if not isinstance(choices_raw, list) or not 2 <= len(choices_raw) <= 5:
        raise RowError("choices", "missing or not a list of 2-5 options")
    choices = [text_field({f"choices[{i}]": c}, f"choices[{i}]") for i, c in enumerate(choices_raw)]
    answer = letter_index(text_field(row, "answer"), len(choices))
    source = f"sample_{language}"
    native_id = text_field(row, "id")
    return mcq(
        source, split, native_id, language, text_field(row, "subject"), text_field(row, "question"), choices, answer
    )


def sample_dir() -> Path:
    """The folder of the built-in sample JSONL files."""
    return Path(str(resources.files("medtune.data") / "sample"))


def _sample_reader(language: str) -> Reader:
    def read(data_dir: Path, split: str, sink: RowSink) -> None:
        path = sample_dir() / f"sample_{language}.jsonl"
        for line, row in iter_jsonl(path, sink):
            if row.get("split") == split:
                sink.add(f"{path}:{line}", sample_record, row, language, split)

    return read


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source("kormedmcqa", "ko", ko.KORMED_SPLITS, ("kormedmcqa/*/*.csv",), ko.read_kormedmcqa),
        Source("kormed_law", "ko", ko.LAW_SPLITS, ("kormedmcqa/law_subset.jsonl",), ko.read_kormed_law),
        Source("kormed_law_all", "ko", ko.LAW_SPLITS, ("kormedmcqa/law_subset.jsonl",), ko.read_kormed_law_all),
        Source("kmmlu_criminal_law", "ko", ko.KMMLU_SPLITS, ("kmmlu_criminal_law/*.csv",), ko.read_kmmlu_criminal_law),
        Source("genmedgpt_ko", "ko", ("train",), ("genmedgpt5k_ko/*.csv",), ko.read_genmedgpt_ko),
        Source("medqa_4opt", "en", en.MEDQA_SPLITS, ("medqa/4_options/*.jsonl",), en.read_medqa_4opt),
        Source("medqa_5opt", "en", en.MEDQA_SPLITS, ("medqa/5_options/*.jsonl",), en.read_medqa_5opt),
        Source("medmcqa", "en", ("dev",), ("medmcqa/*.jsonl",), en.read_medmcqa),
        Source("pubmedqa", "en", ("train", "test"), ("pubmedqa/*.json",), en.read_pubmedqa),
        Source("mmlu", "en", en.MMLU_SPLITS, ("mmlu/*/*.csv",), en.read_mmlu),
        Source("chatdoctor_en", "en", ("train",), ("chatdoctor5k_en/*.json",), en.read_chatdoctor_en),
        Source("medquad", "en", ("train",), ("medquad/*.jsonl",), en.read_medquad),
        Source("sample_ko", "ko", ("train", "test"), ("sample_ko.jsonl",), _sample_reader("ko"), builtin=True),
        Source("sample_en", "en", ("train", "test"), ("sample_en.jsonl",), _sample_reader("en"), builtin=True),
    )
}
# hub splits differ: MedMCQA and MedQA have a train split there (not offline), KorMedMCQA has the same four
HUB_SPLITS = {"medmcqa": ("train", "dev"), "medqa_4opt": ("train", "dev", "test")}


def hub_reader(name: str) -> Reader | None:
    """A reader with the local signature that loads `name` from the hub; None when there is no hub copy."""
    if name == "kormed_law":
        return _law_from_hub
    hub_read = HUB_READERS.get(name)
    if hub_read is None:
        return None
    return lambda _data_dir, split, sink: hub_read(split, sink)


def _law_from_hub(data_dir: Path, split: str, sink: RowSink) -> None:
    """The law block from the hub's KorMedMCQA by the position rule (used when law_subset.jsonl is absent)."""
    if (data_dir / "kormedmcqa" / "law_subset.jsonl").is_file():
        ko.read_kormed_law(data_dir, split, sink)
        return
    for subject in ko.KORMED_SUBJECTS:
        for location, row in hub_rows("kormedmcqa", subject, split):
            try:
                position = [int(str(row[key])) for key in ("year", "period", "q_number")]
            except (KeyError, ValueError):
                sink.bad(location, "year/period/q_number", "missing or not integers")
                continue
            if ko.is_law_block(subject, *position):
                sink.add(location, ko.kormed_record, row, "kormed_law", split, subject)


VIEW_SUBJECTS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    **{f"kormedmcqa_{s}": ("kormedmcqa", (s,)) for s in ko.KORMED_SUBJECTS},
    "mmlu_medical": ("mmlu", en.MMLU_MEDICAL),
    "mmlu_general": ("mmlu", None),  # None: every subject except the medical and health-adjacent ones
}


def _declared_reader(data_dir: Path, split: str, sink: RowSink) -> None:
    raise RuntimeError("a declared dataset is read whole by Source.declared.read_all, not split by split (a bug).")


def declared_sources(data_cfg: Any) -> dict[str, Source]:
    """The datasets declared in data.datasets as sources; a name taken by a built-in source or view is refused."""
    out = {}
    for name, ds in (getattr(data_cfg, "datasets", None) or {}).items():
        if name in SOURCES or name in VIEW_SUBJECTS or re.fullmatch(r"mmlu_([a-z_]+)", name):
            raise ConfigError(f"data.datasets.{name}: {name!r} is the name of a built-in source or view; rename it.")
        declared = Declared(name, ds, resolve_dir(data_cfg.data_dir), bool(getattr(data_cfg, "hub", False)))
        out[name] = Source(name, ds.language, (), (), _declared_reader, declared=declared)
    return out


def all_sources(data_cfg: Any) -> dict[str, Source]:
    """Built-in sources, then the declared datasets of `data_cfg` (None: built-in only)."""
    return SOURCES | (declared_sources(data_cfg) if data_cfg is not None else {})


def resolve(name: str, data_cfg: Any = None) -> tuple[Source, Callable[[Record], bool] | None]:
    """A source, view or declared dataset name -> (prepared source, record filter or None)."""
    if name in SOURCES:
        return SOURCES[name], None
    declared = declared_sources(data_cfg) if data_cfg is not None else {}
    if name in declared:
        return declared[name], None
    if name in VIEW_SUBJECTS:
        base, subjects = VIEW_SUBJECTS[name]
        if subjects is None:
            excluded = set(en.MMLU_MEDICAL) | set(en.MMLU_HEALTH_ADJACENT)
            return SOURCES[base], lambda r: r.subject not in excluded
        allowed = set(subjects)
        return SOURCES[base], lambda r: r.subject in allowed
    match = re.fullmatch(r"mmlu_([a-z_]+)", name)
    if match:
        subject = match.group(1)
        return SOURCES["mmlu"], lambda r: r.subject == subject
    known = sorted([*SOURCES, *VIEW_SUBJECTS, "mmlu_<subject>"])
    mine = f"; declared in data.datasets: {', '.join(declared)}" if declared else ""
    raise KeyError(
        f"unknown data source {name!r}; known sources and views: {', '.join(known)}{mine}. Your own data: declare "
        "it under data.datasets (README, 'Your own data')."
    )


def parse_spec(spec: str) -> tuple[str, str]:
    """'kormedmcqa:train' -> ('kormedmcqa', 'train'); the split is required."""
    name, sep, split = spec.partition(":")
    if not sep or not name or not split:
        raise ValueError(f"source spec {spec!r} is not '<source>:<split>', e.g. 'kormedmcqa:train'.")
    return name, split
