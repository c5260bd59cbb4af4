"""The source registry: names, languages, splits, raw files, readers (local and hub), and derived views.

A source spec is "<source>:<split>". Besides the prepared sources there are views, filtered at load time:
`kormedmcqa_<doctor|nurse|pharm|dentist>` (one KorMedMCQA subject), `mmlu_medical` (MultiMedQA's six subjects),
`mmlu_general` (the non-health subjects, the forgetting probe) and `mmlu_<subject>` (one MMLU subject).
The datasets of config (`data.datasets.<name>`, a `DatasetSource` of sources/datasets.py) are sources too, with
the same interface (`Source`): `resolve(name, data_cfg)` and `all_sources(data_cfg)` see them next to the built-in
ones, and prepare, loading and preflight never ask which kind a source is.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol

from medtune.config import ConfigError, DataConfig
from medtune.config.checks import resolve_dir
from medtune.data.schema import Record, RowError, RowSink, letter_index, mcq, text_field
from medtune.data.sources import english as en
from medtune.data.sources import korean as ko
from medtune.data.sources.datasets import DatasetSource
from medtune.data.sources.hub import HUB_READERS, hub_rows
from medtune.data.sources.readers import iter_jsonl

Reader = Callable[[Path, str, RowSink], None]


class Source(Protocol):
    """What prepare, loading and preflight ask of a source, built-in or of data.datasets alike."""

    name: str
    split_hint: str  # said after "has no split ..." (how to give the source that split)

    @property
    def language(self) -> str:
        """The language of its rows."""

    def is_hub(self, data_cfg: DataConfig) -> bool:
        """True when it is read from the Hugging Face hub under this data config."""

    def splits(self, data_cfg: DataConfig) -> tuple[str, ...] | None:
        """Its splits, or None when its data decides them (known once it is prepared)."""

    def files(self, data_cfg: DataConfig) -> list[Path]:
        """The local files it reads ([] from the hub); an error names the path and the fix when there are none."""

    def identity(self, data_cfg: DataConfig) -> str:
        """What decides its rows besides its files' contents (hashed into the prepared copy's key)."""

    def read(self, data_cfg: DataConfig, sink: RowSink) -> dict[str, list[Record]]:
        """{split: records} of every split; bad rows go to the sink."""


@dataclass(frozen=True)
class BuiltinSource:
    """A source medtune knows: its language, splits, raw files (globs under data_dir) and reader, maybe a hub copy."""

    name: str
    language: str
    local_splits: tuple[str, ...]
    patterns: tuple[str, ...]  # glob patterns under data_dir; the version key hashes their sizes and mtimes
    reader: Reader
    in_package: bool = False  # ships inside the package (no data_dir needed)
    split_hint: str = ""

    def is_hub(self, data_cfg: DataConfig) -> bool:
        """True when data.hub=true and the source has a hub copy."""
        return data_cfg.hub and hub_reader(self.name) is not None

    def splits(self, data_cfg: DataConfig) -> tuple[str, ...]:
        """Its splits (the hub copy may have more)."""
        return HUB_SPLITS.get(self.name, self.local_splits) if self.is_hub(data_cfg) else self.local_splits

    def files(self, data_cfg: DataConfig) -> list[Path]:
        """The raw files it reads ([] from the hub); FileNotFoundError names the folder when there are none."""
        if self.is_hub(data_cfg):
            return []
        root = sample_dir() if self.in_package else resolve_dir(data_cfg.data_dir)
        files = sorted(p for pattern in self.patterns for p in root.glob(pattern) if p.is_file())
        if not files:
            raise FileNotFoundError(
                f"no raw files for source {self.name!r} under {root} (looked for {list(self.patterns)}); set "
                "data.data_dir (or MEDTUNE_DATA_DIR) to the dataset folder described in ../shared/data/README.md"
                + ("" if hub_reader(self.name) is None else ", or set data.hub=true to load it from the hub")
                + "."
            )
        return files

    def identity(self, data_cfg: DataConfig) -> str:
        """Its adapter decides its rows; from the hub, the hub copy does."""
        return f"hub:{self.name}:" if self.is_hub(data_cfg) else ""

    def read(self, data_cfg: DataConfig, sink: RowSink) -> dict[str, list[Record]]:
        """Run the adapter (or the hub's) over every split."""
        reader = hub_reader(self.name) if self.is_hub(data_cfg) else self.reader
        data_dir = resolve_dir(data_cfg.data_dir)
        by_split: dict[str, list[Record]] = {}
        for split in self.splits(data_cfg):
            start = len(sink.records)
            reader(data_dir, split, sink)
            by_split[split] = sink.records[start:]
        return by_split


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


SOURCES: dict[str, BuiltinSource] = {
    s.name: s
    for s in (
        BuiltinSource("kormedmcqa", "ko", ko.KORMED_SPLITS, ("kormedmcqa/*/*.csv",), ko.read_kormedmcqa),
        BuiltinSource("kormed_law", "ko", ko.LAW_SPLITS, ("kormedmcqa/law_subset.jsonl",), ko.read_kormed_law),
        BuiltinSource("kormed_law_all", "ko", ko.LAW_SPLITS, ("kormedmcqa/law_subset.jsonl",), ko.read_kormed_law_all),
        BuiltinSource(
            "kmmlu_criminal_law", "ko", ko.KMMLU_SPLITS, ("kmmlu_criminal_law/*.csv",), ko.read_kmmlu_criminal_law
        ),
        BuiltinSource("genmedgpt_ko", "ko", ("train",), ("genmedgpt5k_ko/*.csv",), ko.read_genmedgpt_ko),
        BuiltinSource("medqa_4opt", "en", en.MEDQA_SPLITS, ("medqa/4_options/*.jsonl",), en.read_medqa_4opt),
        BuiltinSource("medqa_5opt", "en", en.MEDQA_SPLITS, ("medqa/5_options/*.jsonl",), en.read_medqa_5opt),
        BuiltinSource("medmcqa", "en", ("dev",), ("medmcqa/*.jsonl",), en.read_medmcqa),
        BuiltinSource("pubmedqa", "en", ("train", "test"), ("pubmedqa/*.json",), en.read_pubmedqa),
        BuiltinSource("mmlu", "en", en.MMLU_SPLITS, ("mmlu/*/*.csv",), en.read_mmlu),
        BuiltinSource("chatdoctor_en", "en", ("train",), ("chatdoctor5k_en/*.json",), en.read_chatdoctor_en),
        BuiltinSource("medquad", "en", ("train",), ("medquad/*.jsonl",), en.read_medquad),
        # the built-in samples ship inside the package (in_package=True): no data_dir needed
        BuiltinSource("sample_ko", "ko", ("train", "test"), ("sample_ko.jsonl",), _sample_reader("ko"), True),
        BuiltinSource("sample_en", "en", ("train", "test"), ("sample_en.jsonl",), _sample_reader("en"), True),
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


def dataset_sources(data_cfg: DataConfig) -> dict[str, Source]:
    """The datasets of data.datasets as sources; a name taken by a built-in source or view is refused."""
    out: dict[str, Source] = {}
    for name, ds in (data_cfg.datasets if data_cfg is not None else {}).items():
        if name in SOURCES or name in VIEW_SUBJECTS or re.fullmatch(r"mmlu_([a-z_]+)", name):
            raise ConfigError(f"data.datasets.{name}: {name!r} is the name of a built-in source or view; rename it.")
        out[name] = DatasetSource(name, ds)
    return out


def all_sources(data_cfg: DataConfig) -> dict[str, Source]:
    """Built-in sources, then the datasets of `data_cfg` (data.datasets; None: built-in only)."""
    return SOURCES | (dataset_sources(data_cfg) if data_cfg is not None else {})


def resolve(name: str, data_cfg: DataConfig | None = None) -> tuple[Source, Callable[[Record], bool] | None]:
    """A source, view or data.datasets name -> (prepared source, record filter or None)."""
    if name in SOURCES:
        return SOURCES[name], None
    datasets = dataset_sources(data_cfg) if data_cfg is not None else {}
    if name in datasets:
        return datasets[name], None
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
    mine = f"; declared in data.datasets: {', '.join(datasets)}" if datasets else ""
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
