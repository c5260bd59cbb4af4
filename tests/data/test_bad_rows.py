"""Bad input: missing field, answer out of range, empty question, undecodable bytes, broken JSON.

With data.on_bad_row=error the error names the file, the line and the field; with skip the row is skipped and
counted in the manifest, and a later load with on_bad_row=error refuses the cache instead of hiding the row.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES as TEST_FIXTURES

from medtune.config import DataConfig
from medtune.data import BadRowError, load_records, prepare

FIXTURES = TEST_FIXTURES / "data"


def make_cfg(tmp_path: Path, on_bad_row: str = "error") -> DataConfig:
    data = tmp_path / "raw"
    if not data.exists():
        shutil.copytree(FIXTURES, data)
    return DataConfig(data_dir=str(data), cache_dir=str(tmp_path / "cache"), on_bad_row=on_bad_row)


def corrupt_kormed(data: Path, old: str, new: str) -> Path:
    path = data / "kormedmcqa" / "doctor" / "train.csv"
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


CASES = {
    # case: (edit the raw copy -> (file, line), source, split, field, reason fragment)
    "answer_out_of_range": (
        lambda d: (corrupt_kormed(d, "관찰 0-4,C,", "관찰 0-4,F,"), 2),
        "kormedmcqa",
        "train",
        "answer",
        "is not a letter in A-E",
    ),
    "empty_question": (
        lambda d: (corrupt_kormed(d, "당뇨병 환자(1번)의 관리로 가장 적절한 것은?", ""), 5),
        "kormedmcqa",
        "train",
        "question",
        "empty",
    ),
    "missing_field": (lambda d: _drop_key(d / "medmcqa" / "dev.jsonl", 2, "opc"), "medmcqa", "dev", "opc", "missing"),
    "cop_out_of_range": (
        lambda d: _set_key(d / "medmcqa" / "dev.jsonl", 1, "cop", 5),
        "medmcqa",
        "dev",
        "cop",
        "out of range",
    ),
    "undecodable_bytes": (
        lambda d: _bad_bytes(d / "mmlu" / "test" / "philosophy_test.csv"),
        "mmlu",
        "test",
        "B",
        "undecodable",
    ),
    "broken_json_line": (
        lambda d: _broken_line(d / "medquad" / "medquad.jsonl"),
        "medquad",
        "train",
        "<line>",
        "not valid JSON",
    ),
}


def _rewrite_jsonl(path: Path, line: int, edit) -> tuple[Path, int]:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    edit(rows[line - 1])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, line


def _drop_key(path: Path, line: int, key: str) -> tuple[Path, int]:
    return _rewrite_jsonl(path, line, lambda row: row.pop(key))


def _set_key(path: Path, line: int, key: str, value: object) -> tuple[Path, int]:
    return _rewrite_jsonl(path, line, lambda row: row.__setitem__(key, value))


def _bad_bytes(path: Path) -> tuple[Path, int]:
    path.write_bytes(path.read_bytes().replace(b"Kant", b"K\xffnt"))  # Latin-1 byte in a UTF-8 file
    return path, 1


def _broken_line(path: Path) -> tuple[Path, int]:
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:-5]
    path.write_text("\n".join(lines) + "\n")
    return path, 2


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_row_error_names_file_line_and_field(tmp_path: Path, case: str) -> None:
    edit, source, split, field, reason = CASES[case]
    cfg = make_cfg(tmp_path)
    path, line = edit(Path(cfg.data_dir))
    with pytest.raises(BadRowError) as info:
        load_records(source, split, cfg)
    message = str(info.value)
    assert f"{path}:{line}" in message and f"field {field!r}" in message and reason in message
    assert "on_bad_row=skip" in message  # the fix is named


@pytest.mark.parametrize("case", sorted(CASES))
def test_skip_counts_bad_rows_and_keeps_the_rest(tmp_path: Path, case: str) -> None:
    edit, source, split, field, _ = CASES[case]
    clean = prepare(make_cfg(tmp_path / "clean"), [source])[source]["counts"][split]
    cfg = make_cfg(tmp_path, on_bad_row="skip")
    path, line = edit(Path(cfg.data_dir))
    manifest = prepare(cfg, [source])[source]
    assert manifest["counts"][split] == clean - 1
    assert manifest["skipped"] == [
        {"location": f"{path}:{line}", "field": field, "reason": manifest["skipped"][0]["reason"]}
    ]
    strict = DataConfig(data_dir=cfg.data_dir, cache_dir=cfg.cache_dir, on_bad_row="error")
    with pytest.raises(BadRowError, match=f"field {field!r}"):
        load_records(source, split, strict)  # the cache holds skipped rows: do not hide them now


def test_missing_raw_file_names_the_path_and_fix(tmp_path: Path) -> None:
    cfg = DataConfig(data_dir=str(tmp_path / "empty"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="MEDTUNE_DATA_DIR"):
        load_records("medmcqa", "dev", cfg)


def test_unknown_split_lists_the_splits(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no split 'train'.*\['dev'\]"):
        load_records("medmcqa", "train", make_cfg(tmp_path))


def test_skipped_rows_reach_the_run_report(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file whose every row is bad is skipped whole under on_bad_row=skip: the run's summary says how much."""
    cfg = make_cfg(tmp_path, on_bad_row="skip")
    path = Path(cfg.data_dir) / "medmcqa" / "dev.jsonl"
    n_rows = len(path.read_text().splitlines())
    path.write_text("".join("{not json\n" for _ in range(n_rows)))
    extra = Path(cfg.data_dir) / "medmcqa" / "extra.jsonl"  # a second, good file keeps the source non-empty
    shutil.copy(FIXTURES / "medmcqa" / "dev.jsonl", extra)
    report: dict = {}
    with caplog.at_level("WARNING", logger="medtune.data.loading"):
        load_records("medmcqa", "dev", cfg, report=report)
    assert report["data/medmcqa/skipped_rows"] == n_rows
    assert report["data/medmcqa/files_with_skipped_rows"] == 1
    assert f"{n_rows} bad rows skipped" in caplog.text and str(path) in caplog.text
