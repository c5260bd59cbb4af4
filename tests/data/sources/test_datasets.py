"""The datasets of data.datasets (DatasetSource): every format, every file type, every way to split, ids, the guard."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medtune.config import DataConfig
from medtune.data import BadRowError, load_records, prepare
from medtune.data.prepare import prepared_dir, source_splits
from medtune.data.schema import RowSink
from medtune.data.sources.registry import resolve, sample_dir

QUESTIONS = [(f"症状{i}の原因は?", [f"原因{i}{c}" for c in "あいうえ"], i % 4) for i in range(20)]


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def mcq_rows(n: int = 20, start: int = 0) -> list[dict]:
    return [{"id": f"q{i}", "q": q, "opts": opts, "ans": "ABCD"[a]} for i, (q, opts, a) in enumerate(QUESTIONS[:n])][
        start:
    ]


def without_id(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "id"} for row in rows]


def config(tmp_path: Path, files: dict[str, str | bytes], **datasets: dict) -> DataConfig:
    """A DataConfig over tmp_path/raw holding `files`, with `datasets` declared."""
    raw = tmp_path / "raw"
    for name, content in files.items():
        path = raw / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return DataConfig(data_dir=str(raw), cache_dir=str(tmp_path / "cache"), datasets=datasets)


MCQ = {"format": "mcq", "language": "ja", "columns": {"question": "q", "options": "opts", "answer": "ans"}}


def test_jsonl_mcq_with_a_list_column_and_letters(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"exam.jsonl": jsonl(mcq_rows())}, exam={**MCQ, "path": "exam.jsonl", "language": "JA"})
    assert prepare(cfg, ["exam"])["exam"]["counts"] == {"train": 20}  # no splits declared: one file is train
    records = load_records("exam", "train", cfg)
    first = records[0]
    assert first.id == "exam:train:q0" and first.language == "ja" and first.subject == "exam"  # the file's own ids
    assert first.choices == tuple(QUESTIONS[0][1]) and first.answer_index == 0 and first.answer_text == "原因0あ"
    assert [r.answer_index for r in records] == [a for _, _, a in QUESTIONS]


def test_csv_with_one_column_per_option_and_answers_from_one(tmp_path: Path) -> None:
    csv_text = "問題,A,B,C,D,正解,分野\n" + "".join(
        f"{q},{','.join(opts[:3])},{opts[3] if i else ''},{a + 1 if i else 2},内科\n"
        for i, (q, opts, a) in enumerate(QUESTIONS[:4])
    )
    ds = {
        "format": "mcq",
        "language": "ja",
        "path": "exam.csv",
        "answer_format": "index1",
        "columns": {"question": "問題", "options": ["A", "B", "C", "D"], "answer": "正解", "subject": "分野"},
    }
    records = load_records("exam", "train", config(tmp_path, {"exam.csv": csv_text}, exam=ds))
    assert len(records[0].choices) == 3 and records[0].answer_index == 1  # an empty last option: a 3-option row
    assert [len(r.choices) for r in records[1:]] == [4, 4, 4] and records[1].answer_index == QUESTIONS[1][2]
    assert {r.subject for r in records} == {"内科"} and records[2].id == "exam:train:exam-4"  # file line 4


def test_tsv_answers_as_text_and_parquet_answers_as_index(tmp_path: Path) -> None:
    tsv = "question\toptions\tanswer\n" + "".join(
        f"{q}\t{json.dumps(opts, ensure_ascii=False)}\t {opts[a].upper()} \n" for q, opts, a in QUESTIONS[:5]
    )
    table = pa.Table.from_pylist([{"question": q, "options": o, "answer": a} for q, o, a in QUESTIONS[:6]])
    (tmp_path / "raw").mkdir()
    pq.write_table(table, tmp_path / "raw" / "exam.parquet")
    cfg = config(
        tmp_path,
        {"exam.tsv": tsv},
        by_text={"format": "mcq", "language": "ja", "path": "exam.tsv", "answer_format": "text"},
        by_index={"format": "mcq", "language": "ja", "path": "exam.parquet", "answer_format": "index"},
    )
    by_text, by_index = load_records("by_text", "train", cfg), load_records("by_index", "train", cfg)
    assert [r.answer_index for r in by_text] == [a for _, _, a in QUESTIONS[:5]]  # case and spaces do not matter
    assert [r.answer_index for r in by_index] == [a for _, _, a in QUESTIONS[:6]]
    assert by_index[0].id == "by_index:train:exam-0"  # Parquet rows are numbered from 0


def test_json_array_qa_and_alpaca_instructions(tmp_path: Path) -> None:
    qa = json.dumps(
        [{"question": "熱が出たら?", "answer": "水分をとって休む。", "context": "成人"}], ensure_ascii=False
    )
    alpaca = jsonl(
        [
            {"instruction": "言い換えて", "input": "浮腫", "output": "むくみ"},
            {"instruction": "挨拶して", "output": "こんにちは"},
        ]
    )
    cfg = config(
        tmp_path,
        {"qa.json": qa, "inst.jsonl": alpaca},
        qa={"format": "qa", "language": "ja", "path": "qa.json", "columns": {"context": "context"}},
        inst={"format": "alpaca", "language": "ja", "path": "inst.jsonl"},
    )
    (qa_record,) = load_records("qa", "train", cfg)
    assert qa_record.kind == "open" and qa_record.answer_text == "水分をとって休む。" and qa_record.context == "成人"
    first, second = load_records("inst", "train", cfg)
    assert first.question == "言い換えて\n浮腫" and first.answer_text == "むくみ" and second.question == "挨拶して"


def test_chat_conversations_with_sharegpt_names(tmp_path: Path) -> None:
    talk = {"conversations": [{"from": "system", "value": "丁寧に"}, {"from": "human", "value": "頭が痛い"},
                              {"from": "gpt", "value": "いつからですか"}, {"from": "human", "value": "昨日から"},
                              {"from": "gpt", "value": "受診してください"}]}  # fmt: skip
    ds = {"format": "chat", "language": "ja", "path": "chat.jsonl",
          "columns": {"messages": "conversations", "role": "from", "content": "value"}}  # fmt: skip
    (record,) = load_records("chat", "train", config(tmp_path, {"chat.jsonl": jsonl([talk])}, chat=ds))
    assert record.kind == "chat" and record.question == "頭が痛い" and record.answer_text == "受診してください"
    assert [role for role, _ in record.messages] == ["system", "user", "assistant", "user", "assistant"]


def test_splits_from_files_and_globs(tmp_path: Path) -> None:
    files = {"ja/train/a.jsonl": jsonl(mcq_rows(8)), "ja/train/b.jsonl": jsonl(mcq_rows(12, 8)),
             "ja/test.jsonl": jsonl(mcq_rows(20, 12))}  # fmt: skip
    ds = {**MCQ, "path": "ja", "splits": {"train": "train/*.jsonl", "test": "test.jsonl"}}
    cfg = config(tmp_path, files, exam=ds)
    assert prepare(cfg, ["exam"])["exam"]["counts"] == {"train": 12, "test": 8}
    ids = [r.id for r in load_records("exam", "train", cfg)]
    assert ids[0] == "exam:train:q0" and ids[-1] == "exam:train:q11"  # the files' own id column
    no_ids = {"ja/train/a.jsonl": mcq_rows(8), "ja/train/b.jsonl": mcq_rows(12, 8), "ja/test.jsonl": mcq_rows(20, 12)}
    cfg = config(tmp_path / "n", {name: jsonl(without_id(rows)) for name, rows in no_ids.items()}, exam=ds)
    ids = [r.id for r in load_records("exam", "train", cfg)]
    assert ids[0] == "exam:train:train/a-1" and ids[-1] == "exam:train:train/b-4"  # without one: file and line


def test_a_files_own_id_column_is_used_and_ids_are_per_split(tmp_path: Path) -> None:
    """train/vi.jsonl and test/vi.jsonl both numbering from 1: ids are per split, used unmapped, and kept in the
    records (so in predictions); repeated within one split they are a bad row with both lines."""
    train = [{"id": str(i + 1), **row} for i, row in enumerate(without_id(mcq_rows(12)))]
    test = [{"id": str(i + 1), **row} for i, row in enumerate(without_id(mcq_rows(20, 12)))]
    files = {"vi/test/vi.jsonl": jsonl(test)}
    ds = {**MCQ, "path": "vi", "language": "vi", "splits": {"train": "train/vi.jsonl", "test": "test/vi.jsonl"}}
    cfg = config(tmp_path, {**files, "vi/train/vi.jsonl": jsonl(train)}, vi=ds)
    assert prepare(cfg, ["vi"])["vi"]["counts"] == {"train": 12, "test": 8}
    assert [r.id for r in load_records("vi", "test", cfg)][:2] == ["vi:test:1", "vi:test:2"]
    assert [r.id for r in load_records("vi", "train", cfg)][-1] == "vi:train:12"
    repeated = config(tmp_path / "r", {**files, "vi/train/vi.jsonl": jsonl([*train[:3], train[1]])}, vi=ds)
    with pytest.raises(BadRowError) as err:
        prepare(repeated, ["vi"])
    message = str(err.value)
    assert "train/vi.jsonl:4: field 'id'" in message and "id '2' repeats the row at" in message
    assert "train/vi.jsonl:2" in message and "unique within a split" in message
    missing = config(
        tmp_path / "m", {**files, "vi/train/vi.jsonl": jsonl([*train[:3], *without_id(train[3:4])])}, vi=ds
    )
    with pytest.raises(BadRowError, match=r"vi\.jsonl:4: field 'id': missing \(the file has an id column"):
        prepare(missing, ["vi"])


def test_split_column_with_and_without_a_mapping(tmp_path: Path) -> None:
    rows = [{**row, "part": ["trn", "tst", "dev"][i % 3]} for i, row in enumerate(mcq_rows())]
    files = {"exam.jsonl": jsonl(rows)}
    cfg = config(tmp_path, files, exam={**MCQ, "path": "exam.jsonl", "split_column": "part"})
    assert prepare(cfg, ["exam"])["exam"]["counts"] == {"trn": 7, "tst": 7, "dev": 6}
    mapped = {**MCQ, "path": "exam.jsonl", "split_column": "part", "splits": {"train": "trn", "test": "tst"}}
    cfg = config(tmp_path / "m", files, exam=mapped)
    assert prepare(cfg, ["exam"])["exam"]["counts"] == {"train": 7, "test": 7}  # rows of other values are unused


def test_holdout_is_seeded_exact_and_follows_the_row_ids(tmp_path: Path) -> None:
    def held(seed: int, rows: list[dict], where: str) -> set[str]:
        ds = {**MCQ, "path": "exam.jsonl", "holdout": {"fraction": 0.25, "seed": seed}}
        ds["columns"] = {**MCQ["columns"], "id": "id"}
        cfg = config(tmp_path / where, {"exam.jsonl": jsonl(rows)}, exam=ds)
        assert prepare(cfg, ["exam"])["exam"]["counts"] == {"train": len(rows) - round(len(rows) / 4),
                                                            "test": round(len(rows) / 4)}  # fmt: skip
        train = {r.id.rsplit(":", 1)[1] for r in load_records("exam", "train", cfg)}
        test = {r.id.rsplit(":", 1)[1] for r in load_records("exam", "test", cfg)}
        assert not train & test
        return test

    first = held(0, mcq_rows(), "a")
    assert held(0, mcq_rows()[::-1], "b") == first  # by id, not by position in the file
    assert held(1, mcq_rows(), "c") != first


def test_saved_dataset_folder_and_the_hub(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [{"question": q, "options": o, "answer": "ABCD"[a]} for q, o, a in QUESTIONS[:6]]
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:4]), "validation": datasets.Dataset.from_list(rows[4:])}
    )
    dd.save_to_disk(str(tmp_path / "raw" / "saved"))
    saved = {"format": "mcq", "language": "ja", "path": "saved", "splits": {"train": "train", "test": "validation"}}
    hub = {"format": "mcq", "language": "vi", "path": "someone/vi-exam"}
    cfg = DataConfig(data_dir=str(tmp_path / "raw"), cache_dir=str(tmp_path / "cache"), hub=True,
                     datasets={"saved": saved, "vi_exam": hub})  # fmt: skip
    assert prepare(cfg, ["saved"])["saved"]["counts"] == {"train": 4, "test": 2}
    with mock.patch.object(datasets, "load_dataset", return_value=dd) as load:
        manifest = prepare(cfg, ["vi_exam"])["vi_exam"]
    load.assert_called_once_with("someone/vi-exam", None)
    assert manifest["counts"] == {"train": 4, "validation": 2} and manifest["hub"]
    assert resolve("vi_exam", cfg)[0].language == "vi"


def test_changed_declaration_or_file_prepares_again(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"exam.jsonl": jsonl(mcq_rows(8))}, exam={**MCQ, "path": "exam.jsonl"})
    first = prepared_dir(resolve("exam", cfg)[0], cfg)
    other = config(tmp_path, {}, exam={**MCQ, "path": "exam.jsonl", "subject": "内科"})
    assert prepared_dir(resolve("exam", other)[0], other) != first
    assert {r.subject for r in load_records("exam", "train", other)} == {"内科"}
    (tmp_path / "raw" / "exam.jsonl").write_text(jsonl(mcq_rows(9)))
    assert prepared_dir(resolve("exam", cfg)[0], cfg) != first and len(load_records("exam", "train", cfg)) == 9


def test_the_eval_split_of_a_declared_set_is_guarded(tmp_path: Path) -> None:
    """A training row that repeats a question of the declared test split is dropped from any training load."""
    exam = {**MCQ, "path": "exam.jsonl", "holdout": {"fraction": 0.5, "seed": 0}}
    other = {**MCQ, "path": "other.jsonl"}
    cfg = config(
        tmp_path, {"exam.jsonl": jsonl(mcq_rows(10)), "other.jsonl": jsonl(mcq_rows(20))}, exam=exam, other=other
    )
    test_questions = {r.question for r in load_records("exam", "test", cfg)}
    report: dict = {}
    kept = load_records("other", "train", cfg, report=report)
    assert report["data/other:train/dropped_exact"] == 5 and not test_questions & {r.question for r in kept}
    with pytest.raises(ValueError, match="is an evaluation split"):
        from medtune.data import assert_trainable

        assert_trainable("exam:test", cfg)


def test_a_dataset_answers_what_a_built_in_source_answers(tmp_path: Path) -> None:
    """Both kinds of source through one interface: language, hub or not, files, splits, the records of every split."""
    rows = jsonl(mcq_rows(8))
    splits = {"train": "train.jsonl", "test": "test.jsonl"}
    files = {"exam/train.jsonl": rows, "exam/test.jsonl": jsonl(mcq_rows(12, start=8))}
    cfg = config(tmp_path, files, exam={**MCQ, "path": "exam", "splits": splits})
    exam, sample = resolve("exam", cfg)[0], resolve("sample_en", cfg)[0]
    for source, language in ((exam, "ja"), (sample, "en")):
        by_split = source.read(cfg, RowSink())
        assert source.language == language and not source.is_hub(cfg) and sorted(by_split) == ["test", "train"]
        assert {r.source for rs in by_split.values() for r in rs} == {source.name}
    assert exam.files(cfg) == [tmp_path / "raw" / "exam" / "train.jsonl", tmp_path / "raw" / "exam" / "test.jsonl"]
    assert sample.files(cfg) == [sample_dir() / "sample_en.jsonl"]
    assert sample.splits(cfg) == ("train", "test") and exam.splits(cfg) is None  # the data decides a dataset's splits
    assert source_splits(exam, cfg) == ("train", "test")  # from its prepared copy
    assert "split_column or holdout" in exam.split_hint and sample.split_hint == ""
