"""Your own datasets, declared in config next to the built-in sources (`data.datasets.<name>`; README "Your own data").

    data:
      datasets:
        my_ja_mcq:
          path: my/ja_exam.jsonl          # a file, a glob, a folder (datasets.save_to_disk), or a hub id (data.hub)
          format: mcq                     # mcq | qa | instruction | alpaca | chat
          language: ja                    # a BCP 47 code
          columns: {question: q, options: [a, b, c, d], answer: ans}   # our field -> your column(s)
          answer_format: letter           # letter | index (from 0) | index1 (from 1) | text
          holdout: {fraction: 0.2, seed: 0}   # or splits: {train: train.jsonl, test: test.jsonl}, or split_column

Everything here is checked when the config is composed; the files themselves are checked when the dataset is
prepared (before any model loads: `medtune.runtime.preflight` prepares the declared datasets a run uses).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from typing import Any

from medtune.config.checks import ConfigError, check_choice
from medtune.config.languages import normalize_language

FORMATS = ("mcq", "qa", "instruction", "alpaca", "chat")
ANSWER_FORMATS = ("letter", "index", "index1", "text")
FILE_FORMATS = ("auto", "jsonl", "json", "csv", "tsv", "parquet", "saved")
# our field -> (default column, required); `options` may be a list of columns or one column holding a list
COLUMNS: dict[str, dict[str, tuple[Any, bool]]] = {
    "mcq": {"question": ("question", True), "options": ("options", True), "answer": ("answer", True)},
    "qa": {"question": ("question", True), "answer": ("answer", True)},
    "instruction": {"instruction": ("instruction", True), "input": ("input", False), "output": ("output", True)},
    "chat": {"messages": ("messages", True), "role": ("role", True), "content": ("content", True)},
}
COLUMNS["alpaca"] = COLUMNS["instruction"]
OPTIONAL_COLUMNS = ("id", "subject", "context")  # any format: a stable row id, a subject, a passage before the question
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


@dataclass
class HoldoutConfig:
    """A seeded split of one split's rows: `fraction` of `from_split` (by a keyed hash of the row id) become `split`."""

    fraction: float = 0.1
    seed: int = 0
    split: str = "test"
    from_split: str = "train"


@dataclass
class DatasetConfig:
    """One user dataset: where it is, what its rows mean, its language and its splits."""

    format: str = ""  # mcq | qa | instruction | alpaca (instruction/input/output) | chat (messages with roles)
    language: str = ""  # BCP 47, e.g. ja, vi, de, zh-Hant
    path: str | None = None  # file, glob or folder; relative to data.data_dir; medtune:// = inside the package
    columns: dict[str, Any] = field(default_factory=dict)  # our field -> your column (see COLUMNS for defaults)
    answer_format: str = "letter"  # mcq: letter (A-J) | index (0-based) | index1 (1-based) | text (an option's text)
    # split -> where its rows are: a file or glob (relative to `path` when that is a folder), a split of a saved or
    # hub dataset, or a value of `split_column`. Empty: one file is all `train`; a saved/hub dataset keeps its splits.
    splits: dict[str, Any] = field(default_factory=dict)
    split_column: str | None = None  # a column naming each row's split
    holdout: HoldoutConfig | None = None  # a seeded held-out split (e.g. test) cut out of another (train)
    eval_split: str = "test"  # the split that evaluates: a task (mcq), never trained on, checked for leakage
    subject: str | None = None  # every row's subject (default: the dataset's name); columns.subject reads it per row
    domain: str = "medical"  # medical: pooled into eval/lang/<language>; general: a probe reported on its own
    file_format: str = "auto"  # auto (by extension) | jsonl | json | csv | tsv | parquet | saved (save_to_disk)
    hub_config: str | None = None  # the hub dataset's configuration (subset) name, with data.hub=true
    license: str | None = None  # terms of the data, shown in exported model cards (e.g. "internal, de-identified")

    def check(self, name: str) -> None:
        """Validate the declaration of data.datasets.<name>; normalise its language and fill default columns."""
        key = f"data.datasets.{name}"
        if not _NAME.fullmatch(name):
            raise ConfigError(
                f"{key}: a dataset name is letters, digits and '_' starting with a letter (it becomes a source and "
                "task name, and ':' separates a source from its split); rename it."
            )
        if not self.format:
            raise ConfigError(f"{key}.format is not set; say what a row is: one of {list(FORMATS)}.")
        check_choice(f"{key}.format", self.format, FORMATS)
        if not self.language:
            raise ConfigError(f"{key}.language is not set; give the BCP 47 code of its text, e.g. language: ja.")
        self.language = normalize_language(self.language, f"{key}.language")
        check_choice(f"{key}.answer_format", self.answer_format, ANSWER_FORMATS)
        check_choice(f"{key}.file_format", self.file_format, FILE_FORMATS)
        check_choice(f"{key}.domain", self.domain, ("medical", "general"))
        self.columns = self._checked_columns(key)
        if not self.path and not self.splits:
            raise ConfigError(f"{key}: set path (a file, glob or folder) or splits (split -> file).")
        if self.holdout is not None:
            h = self.holdout
            if not 0.0 < h.fraction < 1.0:
                raise ConfigError(f"{key}.holdout.fraction={h.fraction} must be in (0, 1), e.g. 0.1.")
            if h.split == h.from_split or h.split in self.splits:
                raise ConfigError(
                    f"{key}.holdout.split={h.split!r} already exists; the held-out rows form a new split (e.g. test)."
                )

    def _checked_columns(self, key: str) -> dict[str, Any]:
        spec = COLUMNS[self.format]
        unknown = sorted(set(self.columns) - set(spec) - set(OPTIONAL_COLUMNS))
        if unknown:
            raise ConfigError(
                f"{key}.columns has {unknown}, which format {self.format} does not read; its fields are "
                f"{[*spec, *OPTIONAL_COLUMNS]} (each maps to a column of your file)."
            )
        out = {name: default for name, (default, _) in spec.items()} | dict(self.columns)
        for name, value in out.items():
            is_list = isinstance(value, list | tuple)
            if is_list and not (name == "options" and value and all(isinstance(v, str) for v in value)):
                raise ConfigError(f"{key}.columns.{name}={value!r}: only options may list several columns.")
            if not is_list and (not isinstance(value, str) or not value):
                raise ConfigError(f"{key}.columns.{name}={value!r} must be a column name.")
        if isinstance(out.get("options"), list | tuple) and not 2 <= len(out["options"]) <= 10:
            raise ConfigError(f"{key}.columns.options lists {len(out['options'])} columns; an MCQ has 2-10 options.")
        return {k: list(v) if isinstance(v, list | tuple) else v for k, v in out.items()}


def _build(cls: type, value: dict, key: str) -> Any:
    """`cls(**value)` with unknown keys and wrong types named (typed fields are not enforced by Hydra here)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in value:
        if name not in fields:
            close = difflib.get_close_matches(str(name), list(fields), n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise ConfigError(f"{key}.{name} is not a setting of a dataset.{hint} The settings: {', '.join(fields)}.")
    for name, item in value.items():
        want = {"str": str, "str | None": str, "int": int, "float": (int, float), "dict[str, Any]": dict}.get(
            str(fields[name].type)
        )
        if want is not None and not isinstance(item, want) and not (item is None and "None" in str(fields[name].type)):
            raise ConfigError(f"{key}.{name}={item!r} must be a {fields[name].type} value.")
    return cls(**value)


def check_datasets(datasets: dict[str, Any]) -> dict[str, DatasetConfig]:
    """Every data.datasets entry as a checked DatasetConfig (from the composed config's plain mappings)."""
    out = {}
    for name, value in datasets.items():
        key = f"data.datasets.{name}"
        if isinstance(value, DatasetConfig):
            ds = value
        elif isinstance(value, dict):
            fields = dict(value)
            if isinstance(fields.get("holdout"), dict):
                fields["holdout"] = _build(HoldoutConfig, fields["holdout"], f"{key}.holdout")
            elif fields.get("holdout") is not None:
                raise ConfigError(f"{key}.holdout must be a mapping such as {{fraction: 0.1, seed: 0}}.")
            ds = _build(DatasetConfig, fields, key)
        else:
            raise ConfigError(f"{key} must be a mapping (format, language, path, ...).")
        ds.check(str(name))
        out[str(name)] = ds
    return out
