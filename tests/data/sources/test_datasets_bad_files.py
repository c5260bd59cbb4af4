"""Bad files in data.datasets stop early, each with the file, the line, the field and the fix; skip mode counts them.

Config mistakes (an unknown format, a language that is not a code, a column key nobody reads) stop when the config
is composed; file mistakes stop when the dataset is prepared, which preflight does before any model loads.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from medtune.config import ConfigError, DataConfig, compose
from medtune.data import BadRowError, load_records, prepare
from medtune.data.cli import main as data_main
from medtune.data.loading import skipped_rows
from medtune.data.sources.registry import resolve
from medtune.data.sources.tables import DatasetError
from medtune.runtime.preflight import check_run

COLUMNS = {"id": "qid", "question": "stem", "options": "choices", "answer": "correct"}
GOOD = [
    {"qid": f"q{i}", "stem": f"質問{i}", "choices": ["あ", "い", "う", "え"], "correct": "ABCD"[i % 4]}
    for i in range(6)
]


def lines(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def declare(tmp_path: Path, content: str | bytes, name: str = "exam.jsonl", **overrides: object) -> DataConfig:
    raw = tmp_path / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    ds = {"format": "mcq", "language": "ja", "path": name, "columns": COLUMNS} | overrides
    on_bad_row = str(ds.pop("on_bad_row", "error"))
    return DataConfig(
        data_dir=str(raw), cache_dir=str(tmp_path / "cache"), on_bad_row=on_bad_row, datasets={"exam": ds}
    )


def prepare_error(cfg: DataConfig) -> str:
    with pytest.raises((DatasetError, BadRowError)) as err:
        prepare(cfg, ["exam"])
    return str(err.value)


# kind of bad file -> (file content, file name, declaration overrides, every fragment the message must hold)
BAD_FILES = {
    "missing_file": ("", "exam.jsonl", {"path": "nowhere/exam.jsonl"},
                     ["data.datasets.exam: path", "nowhere/exam.jsonl matches no file", "data.data_dir="]),
    "unknown_file_type": ("x", "exam.xlsx", {"path": "exam.xlsx"},
                          ["exam.xlsx has the extension '.xlsx'", "medtune reads .jsonl, .json, .csv", "file_format"]),
    "column_not_there": (lines([{k.replace("stem", "question"): v for k, v in GOOD[0].items()}]), "exam.jsonl", {},
                         ["exam.jsonl: no column 'stem' (data.datasets.exam.columns.question)",
                          "its columns are ['qid', 'question', 'choices', 'correct']", "Set data.datasets.exam."]),
    "answer_outside_the_options": (lines([*GOOD[:2], {**GOOD[2], "correct": "F"}]), "exam.jsonl", {},
                                   ["exam.jsonl:3: field 'correct'", "'F' is not a letter in A-D", "Fix the row"]),
    "answer_text_not_an_option": (lines([{**GOOD[0], "correct": "お"}]), "exam.jsonl", {"answer_format": "text"},
                                  ["exam.jsonl:1: field 'correct'", "'お' is not one of the 4 options"]),
    # every answer written as the option's text while the declaration says letters: the fix is the declaration,
    # not on_bad_row=skip (which would skip every row and empty the split)
    "answer_is_option_text": (lines([{**GOOD[0], "correct": "い"}]), "exam.jsonl", {},
                              ["exam.jsonl:1: field 'correct'", "'い' is the text of an option, not a letter",
                               "Set data.datasets.exam.answer_format=text"]),
    "answer_is_option_text_not_an_index": (lines([{**GOOD[0], "correct": " う "}]), "exam.jsonl",
                                           {"answer_format": "index1"},
                                           ["'う' is the text of an option, not an index (answer_format=index1)",
                                            "answer_format=text"]),
    "answer_index_off_by_one": (lines([{**GOOD[0], "correct": 4}]), "exam.jsonl", {"answer_format": "index"},
                                ["exam.jsonl:1: field 'correct'", "4 is out of range 0-3", "index1 counts from 1"]),
    "empty_split": (lines(GOOD), "exam.jsonl", {"split_column": "qid", "splits": {"train": "q0", "test": "q9"}},
                    ["data.datasets.exam: split 'test' is empty (no rows)", "give it rows or leave it out"]),
    "holdout_leaves_nothing": (lines(GOOD), "exam.jsonl", {"holdout": {"fraction": 0.05}},
                               ["holdout: 0.05 of the 6 rows of 'train' is 0 rows", "change holdout.fraction"]),
    "not_utf8": ((lines(GOOD[:3]) + json.dumps({**GOOD[3], "stem": "@@"}) + "\n").encode().replace(
                 b"@@", "胃痛".encode("shift_jis")), "exam.jsonl", {},
                 ["exam.jsonl:4: field 'stem'", "not valid UTF-8 here; save it as UTF-8"]),
    "duplicate_ids": (lines([*GOOD[:3], {**GOOD[4], "qid": "q1"}]), "exam.jsonl", {},
                      ["exam.jsonl:4: field 'qid'", "id 'q1' repeats the row at", "exam.jsonl:2",
                       "must be unique within a split"]),
    "broken_json_line": (lines(GOOD[:2]) + '{"qid": "q9", "stem": \n', "exam.jsonl", {},
                         ["exam.jsonl:3: field '<line>'", "not valid JSON"]),
    "json_not_an_array": (json.dumps(GOOD[0]), "exam.json", {"path": "exam.json"},
                          ["exam.json: a .json file must hold one array of objects", ".jsonl"]),
    "options_not_a_list": ("qid,stem,choices,correct\nq1,質問,あ/い/う,A\n", "exam.csv", {"path": "exam.csv"},
                           ["exam.csv:2: field 'choices'", "not a list; list the option columns in columns.options"]),
    "chat_without_an_answer": (lines([{"messages": [{"role": "user", "content": "痛い"}]}]), "talk.jsonl",
                               {"path": "talk.jsonl", "format": "chat", "columns": {}},
                               ["talk.jsonl:1: field 'messages'", "must end with an answer"]),
    "chat_unknown_role": (lines([{"messages": [{"role": "doctor", "content": "どうぞ"}]}]), "talk.jsonl",
                          {"path": "talk.jsonl", "format": "chat", "columns": {}},
                          ["talk.jsonl:1: field 'messages[0].role'", "'doctor' is not system, user or assistant"]),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_bad_file_is_named_with_its_line_field_and_fix(tmp_path: Path, kind: str) -> None:
    content, name, overrides, fragments = BAD_FILES[kind]
    message = prepare_error(declare(tmp_path, content, name, **overrides))
    for fragment in fragments:
        assert fragment in message, (kind, message)
    if kind.startswith("answer_is_option_text"):
        assert "on_bad_row" not in message, message


@pytest.mark.parametrize(
    ("declaration", "fragments"),
    [
        ({"format": "multiple_choice"}, ["data.datasets.exam.format='multiple_choice' is not one of", "'mcq'"]),
        ({"format": None}, ["data.datasets.exam.format is not set", "'mcq', 'qa', 'instruction', 'alpaca', 'chat'"]),
        ({"language": "japanese"}, ["data.datasets.exam.language: 'japanese' is not a language code", "is 'ja'"]),
        ({"language": "JP_jp"}, ["separated by '-', not '_'", "JP is a country code; its language is probably 'ja'"]),
        ({"language": "jp"}, ["'jp' is no ISO 639-1 code"]),
        ({"colums": {}}, ["data.datasets.exam.colums is not a setting of a dataset. Did you mean columns?"]),
        ({"columns": {"questoin": "q"}}, ["columns has ['questoin'], which format mcq does not read"]),
        ({"columns": {"options": ["A"]}}, ["columns.options lists 1 columns; an MCQ has 2-10 options"]),
        ({"holdout": {"fraction": 1.5}}, ["data.datasets.exam.holdout.fraction=1.5 must be in (0, 1)"]),
        ({"path": None}, ["set path (a file, glob or folder) or splits"]),
        ({"answer_format": "number"}, ["answer_format='number' is not one of ['letter', 'index', 'index1', 'text']"]),
    ],
)
def test_a_bad_declaration_stops_when_the_config_is_built(declaration: dict, fragments: list[str]) -> None:
    ds = {"format": "mcq", "language": "ja", "path": "exam.jsonl"} | declaration
    ds = {k: v for k, v in ds.items() if v is not None}
    with pytest.raises(ConfigError) as err:
        DataConfig(datasets={"exam": ds})
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


def test_a_bad_declaration_on_the_command_line_stops_at_compose_time() -> None:
    with pytest.raises(ConfigError, match=r"data\.datasets\.exam\.language: 'japanese' is not a language code"):
        compose(["+data.datasets.exam={format:mcq,language:japanese,path:exam.jsonl}"])


def test_a_name_taken_by_a_built_in_source_is_refused(tmp_path: Path) -> None:
    cfg = declare(tmp_path, lines(GOOD))
    cfg.datasets = {"kormedmcqa": cfg.datasets["exam"]}
    with pytest.raises(ConfigError, match="'kormedmcqa' is the name of a built-in source or view; rename it"):
        resolve("kormedmcqa_doctor", cfg)


def test_skip_counts_every_kind_of_bad_row_and_keeps_the_rest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = [{**GOOD[2], "correct": "F"}, {**GOOD[3], "stem": ""}, {**GOOD[4], "qid": "q0"}, {"stem": "no id"}]
    cfg = declare(tmp_path, lines([GOOD[0], GOOD[1], *bad, GOOD[5]]) + "{broken\n", on_bad_row="skip")
    manifest = prepare(cfg, ["exam"])["exam"]
    assert manifest["counts"] == {"train": 3}
    assert [s["field"] for s in manifest["skipped"]] == ["<line>", "qid", "qid", "correct", "stem"]
    assert [r.id for r in load_records("exam", "train", cfg)] == ["exam:train:q0", "exam:train:q1", "exam:train:q5"]
    with caplog.at_level(logging.WARNING):
        assert skipped_rows(resolve("exam", cfg)[0], cfg) == {
            "data/exam/skipped_rows": 5,
            "data/exam/files_with_skipped_rows": 1,
        }
    assert "exam: 5 bad rows skipped (data.on_bad_row=skip)" in caplog.text
    cfg.on_bad_row = "error"  # a cache prepared with skip does not hide the rows from a run that wants errors
    with pytest.raises(BadRowError, match=r"exam\.jsonl:8: field '<line>'"):
        load_records("exam", "train", cfg)


def test_preflight_stops_a_run_on_a_bad_file_before_any_model(tmp_path: Path) -> None:
    cfg = compose(["+experiment=own_data_ja"])
    cfg.data.cache_dir = str(tmp_path / "cache")
    check_run(cfg)  # the shipped example is sound
    bad = declare(tmp_path, lines([*GOOD[:2], {**GOOD[2], "correct": "F"}]))
    cfg.data.datasets["ja_exam"] = bad.datasets["exam"]
    cfg.data.data_dir = bad.data_dir
    with pytest.raises(ConfigError, match=r"data\.datasets\.ja_exam: .*exam\.jsonl:3: field 'correct'"):
        check_run(cfg)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("entry", ["medtune.train", "medtune.evaluate"])
def test_the_command_exits_2_on_a_bad_file_without_importing_torch(tmp_path: Path, entry: str) -> None:
    declare(tmp_path, lines([*GOOD[:2], {**GOOD[2], "correct": "F"}]))
    columns = "{id:qid,question:stem,options:choices,answer:correct}"
    dataset = f"{{format:mcq,language:ja,path:'{tmp_path / 'raw' / 'exam.jsonl'}',columns:{columns}}}"
    # declared, not even used by the mix: every declared dataset is prepared (checked) before anything loads
    cmd = [sys.executable, "-X", "importtime", "-m", entry, f"+data.datasets.mine={dataset}",
           f"hydra.run.dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=100)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "data.datasets.mine:" in out and "exam.jsonl:3: field 'correct': 'F' is not a letter in A-D" in out
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "import time:" in line}
    assert "torch" not in imported and "Traceback" not in out


def test_the_same_file_as_train_and_test_is_named_as_such(tmp_path: Path) -> None:
    """Not as repeated ids (ids are per split) and not silently: a row would be trained on and evaluated."""
    cfg = declare(tmp_path, lines(GOOD), splits={"train": "exam.jsonl", "test": "./exam.jsonl"}, path=None)
    message = prepare_error(cfg)
    assert "data.datasets.exam: splits.train and splits.test both read" in message and "exam.jsonl" in message
    assert "give each split its own file" in message and "holdout" in message and "repeats" not in message


@pytest.mark.parametrize("special", ["/dev/zero", "fifo", "unreadable"])
def test_a_path_that_is_no_readable_plain_file_is_one_line(tmp_path: Path, special: str) -> None:
    """/dev/zero (endless), a named pipe (blocks) or a file without read permission: one message, no read tried."""
    import os

    if special == "fifo":
        path = tmp_path / "exam.jsonl"
        os.mkfifo(path)
    elif special == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads any file")
        path = tmp_path / "exam.jsonl"
        path.write_text(lines(GOOD))
        path.chmod(0)
    else:
        path = Path(special)
    cfg = declare(tmp_path / "d", lines(GOOD), path=str(path), file_format="jsonl")
    message = prepare_error(cfg)
    expected = {"/dev/zero": "is a character device", "fifo": "is a pipe", "unreadable": "cannot be read"}[special]
    assert message.startswith(f"data.datasets.exam.path: {path} {expected}"), message
    with pytest.raises(ConfigError, match=expected):  # what the run's preflight says (exit 2), before any model
        check_run(compose([f"+data.datasets.exam={{format:mcq,language:ja,path:'{path}',file_format:jsonl}}"]))


def test_the_prepare_command_exits_2_with_the_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """No traceback: the line the user needs, on stderr; the overrides may follow the options."""
    shipped = (REPO / "medtune" / "data" / "examples" / "ja" / "exam_questions.jsonl").read_text().splitlines()
    (tmp_path / "exam.jsonl").write_text(
        "\n".join([*shipped[:2], shipped[2].replace('"correct": "D"', '"correct": "E"')])
    )
    argv = ["prepare", "+experiment=own_data_ja", "--sources", "ja_exam", "--cache-dir", str(tmp_path / "cache")]
    assert data_main([*argv, f"data.datasets.ja_exam.path={tmp_path / 'exam.jsonl'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "exam.jsonl:3: field 'correct': 'E' is not a letter in A-D" in err
    assert data_main([*argv, "data.datasets.ja_exam.language=japanese"]) == 2
    assert "data.datasets.ja_exam.language: 'japanese' is not a language code" in capsys.readouterr().err
