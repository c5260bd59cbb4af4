"""One record type for every source, and the bad-row machinery shared by all adapters.

An adapter turns a raw row into a `Record` or raises `RowError(field, reason)`; `RowSink` adds the file and line
and either raises `BadRowError` (data.on_bad_row=error) or counts the row as skipped (data.on_bad_row=skip), so no
row is ever dropped without a trace in the prepare report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

LETTERS = "ABCDEFGHIJ"  # option letters, in order (at most 10 options)
IGNORE_INDEX = -100  # the label of a position that is not a target (PyTorch cross-entropy's ignore_index)


@dataclass(frozen=True)
class Record:
    """One question (MCQ or open QA) from any source, in one schema."""

    id: str  # "<source>:<split>:<native id>", unique
    source: str
    language: str  # a BCP 47 code (medtune.config.normalize_language): ko, en, ja, zh-Hant, ...
    subject: str
    split: str
    kind: str  # mcq | open | chat (built by mcq(), open_qa() and chat() below)
    question: str
    choices: tuple[str, ...]  # empty for open QA
    answer_index: int | None  # 0-based; None for open QA
    answer_text: str
    context: str = ""  # e.g. the PubMedQA abstract
    # chat: every turn as (role, content), role in system | user | assistant; question is the first user turn and
    # answer_text the last assistant turn (what the leakage guard and the reports see)
    messages: tuple[tuple[str, str], ...] = ()

    @property
    def answer_letter(self) -> str:
        """The answer's letter (A, B, ...) of an MCQ; empty for open QA."""
        return "" if self.answer_index is None else LETTERS[self.answer_index]

    def to_row(self) -> dict[str, Any]:
        """A plain dict for a columnar file (choices as a list)."""
        row = asdict(self)
        row["choices"] = list(self.choices)
        row["messages"] = [{"role": role, "content": content} for role, content in self.messages]
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Record:
        """Inverse of `to_row`."""
        answer = row["answer_index"]
        # prepared before chat records existed: no messages column
        messages = tuple((m["role"], m["content"]) for m in row.get("messages") or ())
        return cls(
            **{**row, "choices": tuple(row["choices"] or ()), "answer_index": None if answer is None else int(answer)}
            | {"messages": messages}
        )


SKIP_FIX = "Fix the row, or set data.on_bad_row=skip to skip such rows (they are counted in the prepare report)."


class RowError(ValueError):
    """A raw row that cannot become a Record; carries the offending field, and the fix when it is not the row's."""

    def __init__(self, field_name: str, reason: str, fix: str = SKIP_FIX) -> None:
        super().__init__(f"field {field_name!r}: {reason}")
        self.field_name = field_name
        self.reason = reason
        self.fix = fix  # e.g. a declaration that reads every row wrongly: skipping rows would empty the split


class BadRowError(ValueError):
    """A malformed row, located by file and line (or item), with the fix."""

    def __init__(self, location: str, field_name: str, reason: str, fix: str = SKIP_FIX) -> None:
        super().__init__(f"{location}: field {field_name!r}: {reason}. {fix}")
        self.location = location
        self.field_name = field_name
        self.reason = reason


@dataclass
class RowSink:
    """Collects Records; routes bad rows to an error or to the skipped list per `on_bad_row`."""

    on_bad_row: str = "error"
    records: list[Record] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def add(self, location: str, build: Any, *args: Any) -> None:
        """Call `build(*args)`; keep its Record, or handle its RowError at `location` (e.g. 'a.csv:12')."""
        try:
            record = build(*args)
        except RowError as err:
            if self.on_bad_row == "error":
                raise BadRowError(location, err.field_name, err.reason, err.fix) from None
            self.skipped.append({"location": location, "field": err.field_name, "reason": err.reason})
            return
        self.records.append(record)

    def bad(self, location: str, field_name: str, reason: str) -> None:
        """Report a bad row found outside a builder (e.g. a line that is not JSON)."""
        if self.on_bad_row == "error":
            raise BadRowError(location, field_name, reason)
        self.skipped.append({"location": location, "field": field_name, "reason": reason})


def text_field(row: dict[str, Any], key: str, allow_empty: bool = False) -> str:
    """row[key] as a stripped string; RowError when missing, empty, or holding undecodable bytes."""
    if key not in row or row[key] is None:
        raise RowError(key, "missing")
    value = row[key]
    if isinstance(value, float) and value != value:  # NaN from a reader that maps empty cells to NaN
        raise RowError(key, "missing")
    text = str(value).strip()
    # surrogateescape decoding turns bytes that are not UTF-8 into lone surrogates: find them here, per field
    if any("\udc80" <= ch <= "\udcff" for ch in text):
        raise RowError(key, "undecodable bytes (the file is not valid UTF-8 here; save it as UTF-8)")
    if not text and not allow_empty:
        raise RowError(key, "empty")
    return text


def letter_index(value: Any, n_choices: int, key: str = "answer") -> int:
    """'C' -> 2, checked against the number of choices."""
    letter = str(value).strip().upper()
    if len(letter) != 1 or letter not in LETTERS[:n_choices]:
        raise RowError(key, f"{value!r} is not a letter in {LETTERS[0]}-{LETTERS[n_choices - 1]}")
    return LETTERS.index(letter)


def int_index(value: Any, n_choices: int, base: int, key: str = "answer") -> int:
    """An integer answer (1-based when base=1, 0-based when base=0) -> 0-based, range-checked."""
    try:
        number = int(str(value).strip())
    except ValueError:
        raise RowError(key, f"{value!r} is not an integer") from None
    index = number - base
    if not 0 <= index < n_choices:
        raise RowError(key, f"{number} is out of range {base}-{n_choices - 1 + base}")
    return index


def mcq(
    source: str, split: str, native_id: str, language: str, subject: str, question: str, choices: list[str],
    answer_index: int, context: str = "",
) -> Record:  # fmt: skip
    """Build an MCQ Record (answer_text = the correct choice)."""
    qa = open_qa(source, split, native_id, language, subject, question, choices[answer_index])
    return replace(qa, kind="mcq", choices=tuple(choices), answer_index=answer_index, context=context)


def open_qa(source: str, split: str, native_id: str, language: str, subject: str, question: str, answer: str) -> Record:
    """Build an open-QA Record (no choices)."""
    return Record(
        id=f"{source}:{split}:{native_id}",
        source=source,
        language=language,
        subject=subject,
        split=split,
        kind="open",
        question=question,
        choices=(),
        answer_index=None,
        answer_text=answer,
    )


def chat(
    source: str, split: str, native_id: str, language: str, subject: str, messages: list[tuple[str, str]]
) -> Record:
    """Build a chat Record: the conversation, its first user turn as the question, its last answer as the answer."""
    first_user = next(content for role, content in messages if role == "user")
    qa = open_qa(source, split, native_id, language, subject, first_user, messages[-1][1])
    return replace(qa, kind="chat", messages=tuple(messages))
