"""One row of a declared dataset -> one Record, per format (mcq, qa, instruction/alpaca, chat).

Each builder reads only the columns named in the dataset's `columns` and raises `RowError(column, reason)` for a
row it cannot use: an empty question, an answer outside the options, a conversation that does not end with an
answer. `RowSink` adds the file and line and stops or skips per data.on_bad_row.
"""

from __future__ import annotations

import dataclasses
import json
import unicodedata
from collections.abc import Callable
from typing import Any

from medtune.config import DatasetConfig
from medtune.data.schema import LETTERS, Record, RowError, chat, int_index, letter_index, mcq, open_qa, text_field

Builder = Callable[[dict[str, Any], DatasetConfig, str, str, str], Record]
ROLE_ALIASES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}
ROLE_ALIASES["model"] = "assistant"  # Gemma's name for the assistant turn


def _subject(row: dict[str, Any], ds: DatasetConfig, name: str) -> str:
    if "subject" in ds.columns:
        return text_field(row, ds.columns["subject"])
    return ds.subject or name


def _context(row: dict[str, Any], ds: DatasetConfig) -> str:
    column = ds.columns.get("context")
    return text_field(row, column, allow_empty=True) if column and row.get(column) is not None else ""


def _list_cell(value: Any, column: str) -> list[Any]:
    """A list from a JSON column, or from a text cell that holds a JSON list (CSV)."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise RowError(column, f"a text cell that is not a JSON list ({err.msg})") from None
    if not isinstance(value, list | tuple):
        raise RowError(
            column,
            f"{type(value).__name__} {str(value)[:40]!r}, not a list; list the option columns in columns.options, "
            "or write the cell as a JSON list",
        )
    return list(value)


def options_of(row: dict[str, Any], column: str | list[str]) -> list[str]:
    """The options: one column holding a list, or one column per option (empty trailing options dropped)."""
    if isinstance(column, str):
        if column not in row or row[column] is None:
            raise RowError(column, "missing")
        cells = {f"{column}[{i}]": v for i, v in enumerate(_list_cell(row[column], column))}
    else:
        cells = {c: row.get(c) for c in column}
        while cells and str(list(cells.values())[-1] or "").strip() == "":  # 4 options in a 5-column layout
            cells.popitem()
    options = [text_field(cells, key) for key in cells]
    if not 2 <= len(options) <= len(LETTERS):
        raise RowError(column if isinstance(column, str) else column[0], f"{len(options)} options; an MCQ has 2-10")
    return options


def answer_of(value: Any, options: list[str], answer_format: str, column: str, key: str = "answer_format") -> int:
    """The 0-based answer index from a letter, an index (from 0 or 1) or the option's text; `key`: the declaration's
    answer_format key, named when the answers are written another way."""
    if value is None or str(value).strip() == "":
        raise RowError(column, "missing")
    n = len(options)
    try:
        if answer_format == "letter":
            return letter_index(str(value).strip().strip("().").strip(), n, column)
        if answer_format in ("index", "index1"):
            base = 0 if answer_format == "index" else 1
            try:
                return int_index(str(value).strip().removesuffix(".0"), n, base, column)
            except RowError as err:
                other = "index1 counts from 1" if base == 0 else "index counts from 0"
                raise RowError(column, f"{err.reason} (answer_format={answer_format}; {other})") from None
    except RowError as err:
        if _fold(str(value)) in {_fold(option) for option in options}:  # the answer is written as an option's text
            what = "a letter" if answer_format == "letter" else "an index"
            reason = f"{str(value).strip()[:60]!r} is the text of an option, not {what} (answer_format={answer_format})"
            raise RowError(column, reason, f"Set {key}=text to read answers as option text.") from None
        raise err from None
    want = _fold(str(value))
    matches = [i for i, option in enumerate(options) if _fold(option) == want]
    if len(matches) != 1:
        what = "is not one of the" if not matches else "matches several of the"
        raise RowError(column, f"{str(value).strip()[:60]!r} {what} {n} options (answer_format=text)")
    return matches[0]


def _fold(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def mcq_row(row: dict[str, Any], ds: DatasetConfig, name: str, split: str, native_id: str) -> Record:
    """A multiple-choice row: question, options (list or columns), answer (letter, index or text)."""
    cols = ds.columns
    question = text_field(row, cols["question"])
    options = options_of(row, cols["options"])
    key = f"data.datasets.{name}.answer_format"
    answer = answer_of(row.get(cols["answer"]), options, ds.answer_format, cols["answer"], key)
    subject = _subject(row, ds, name)
    return mcq(name, split, native_id, ds.language, subject, question, options, answer, _context(row, ds))


def qa_row(row: dict[str, Any], ds: DatasetConfig, name: str, split: str, native_id: str) -> Record:
    """A question-answer row (the answer is the training target)."""
    question, answer = text_field(row, ds.columns["question"]), text_field(row, ds.columns["answer"])
    record = open_qa(name, split, native_id, ds.language, _subject(row, ds, name), question, answer)
    context = _context(row, ds)
    return dataclasses.replace(record, context=context)


def instruction_row(row: dict[str, Any], ds: DatasetConfig, name: str, split: str, native_id: str) -> Record:
    """An instruction (alpaca) row: the instruction, its input below it when there is one, the output as target."""
    cols = ds.columns
    instruction = text_field(row, cols["instruction"])
    extra = text_field(row, cols["input"], allow_empty=True) if row.get(cols["input"]) is not None else ""
    question = f"{instruction}\n{extra}" if extra else instruction
    output = text_field(row, cols["output"])
    return open_qa(name, split, native_id, ds.language, _subject(row, ds, name), question, output)


def _turns(value: Any, ds: DatasetConfig, column: str) -> list[tuple[str, str]]:
    role_key, content_key = ds.columns["role"], ds.columns["content"]
    turns = []
    for i, turn in enumerate(_list_cell(value, column)):
        where = f"{column}[{i}]"
        if not isinstance(turn, dict):
            raise RowError(where, f"a {type(turn).__name__}, expected an object with {role_key!r} and {content_key!r}")
        role = ROLE_ALIASES.get(str(turn.get(role_key, "")).strip().lower())
        if role is None:
            raise RowError(f"{where}.{role_key}", f"{turn.get(role_key)!r} is not system, user or assistant")
        turns.append((role, text_field({f"{where}.{content_key}": turn.get(content_key)}, f"{where}.{content_key}")))
    return turns


def chat_row(row: dict[str, Any], ds: DatasetConfig, name: str, split: str, native_id: str) -> Record:
    """A conversation: system (first only), then user and assistant turns, ending with an assistant turn."""
    column = ds.columns["messages"]
    if column not in row or row[column] is None:
        raise RowError(column, "missing")
    turns = _turns(row[column], ds, column)
    roles = [role for role, _ in turns]
    if "system" in roles[1:]:
        raise RowError(column, f"a system turn at position {roles.index('system', 1)}; only the first turn may be one")
    if not roles or roles[-1] != "assistant" or "user" not in roles[: roles.index("assistant")]:
        raise RowError(column, f"roles {roles}: a conversation needs a user turn first and must end with an answer")
    return chat(name, split, native_id, ds.language, _subject(row, ds, name), turns)


BUILDERS: dict[str, Builder] = {
    "mcq": mcq_row,
    "qa": qa_row,
    "instruction": instruction_row,
    "alpaca": instruction_row,
    "chat": chat_row,
}
