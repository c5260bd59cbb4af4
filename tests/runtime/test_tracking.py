"""Tracking: local files always, W&B offline by default, and no W&B failure ever reaches training."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from medtune.config import LoggerConfig
from medtune.runtime.tracking import NullTracker, Tracker, build_tracker
from medtune.runtime.wandb_run import wandb_api_key_present

CONFIG = {"run_name": "t", "seed": 0, "data_mix": {"ratio": "1:1"}}


@pytest.fixture(autouse=True)
def wandb_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep W&B's own state out of the home directory and away from any real key or server."""
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    netrc_path = tmp_path / "netrc"
    netrc_path.write_text("")
    monkeypatch.setenv("NETRC", str(netrc_path))
    for var in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)


def _wandb_records(run_dir: Path, wait_s: float = 10.0) -> list:
    """The records of the one offline run under run_dir, once its exit record is on disk.

    wandb-core writes the transaction log asynchronously: finish() may return some ms before the file is complete.
    """
    deadline = time.monotonic() + wait_s
    while True:
        records = _parse_records(run_dir)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def _parse_records(run_dir: Path) -> list:
    """Parse the protobuf records of the .wandb file (a leveldb-style log of 32 KiB blocks)."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, block_size, pos, buf, records = path.read_bytes(), 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block_size - pos % block_size < 7:  # block trailer padding
            pos += block_size - pos % block_size
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a whole record
            record = pb.Record()
            try:
                record.ParseFromString(buf)
            except DecodeError:  # the writer is mid-record: read again later
                break
            records.append(record)
            buf = b""
    return records


def _history(run_dir: Path) -> list[dict]:
    rows = []
    for rec in _wandb_records(run_dir):
        if rec.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in rec.history.item}
            )
    return rows


def test_local_files_whatever_the_backend(tmp_path: Path) -> None:
    tracker = build_tracker(LoggerConfig(backend="csv"), CONFIG, tmp_path / "run")
    tracker.log({"train/loss": 2.5, "train/tokens_per_s": 100.0}, step=1)
    tracker.log({"train/loss": 2.0}, step=2)
    tracker.log_table("forgetting", ["lang", "delta_pp"], [["ko", -1.5], ["en", 0.5]])
    tracker.summary({"eval/lang/ko/acc": 0.4})
    tracker.finish()
    run = tmp_path / "run"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(x["step"], x["train/loss"]) for x in lines] == [(1, 2.5), (2, 2.0)]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train/loss"] == 2.0 and summary["train/tokens_per_s"] == 100.0
    assert summary["eval/lang/ko/acc"] == 0.4 and summary["run/status"] == "ok" and summary["run/wall_s"] >= 0
    assert (run / "metrics.csv").read_text().splitlines()[0] == "step,elapsed_s,key,value"
    assert json.loads((run / "tables" / "forgetting.json").read_text())["rows"][0] == ["ko", -1.5]
    assert "ratio: '1:1'" in (run / "config.yaml").read_text()
    assert not (run / "wandb").exists()


def test_failed_exit_and_context_manager(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), build_tracker(LoggerConfig(backend="jsonl"), CONFIG, tmp_path) as tracker:
        tracker.log({"train/loss": 1.0}, step=0)
        raise RuntimeError("boom")
    assert json.loads((tmp_path / "summary.json").read_text())["run/status"] == "failed"
    tracker.finish()  # a second finish is harmless


def _summary_race(run_dir: Path) -> tuple[list[str], list[str]]:
    """Two threads log and write the summary 50 times each while a third reads it; (errors, bad reads)."""
    tracker = Tracker(run_dir, "none")
    path = run_dir / "summary.json"
    start, stop = threading.Barrier(3), threading.Event()
    errors: list[str] = []
    bad_reads: list[str] = []

    def write(name: str) -> None:
        start.wait()
        try:
            for i in range(50):
                tracker.log({f"{name}/logged": i, "pad": "x" * 2000}, step=i)
                tracker.summary({f"{name}/{i}": i})
        except Exception as err:
            errors.append(f"{name}: {type(err).__name__}: {err}")

    def read() -> None:
        start.wait()
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                try:
                    json.loads(path.read_text())
                except json.JSONDecodeError as err:
                    bad_reads.append(str(err))

    threads = [threading.Thread(target=write, args=(name,)) for name in ("main", "watchdog")]
    reader = threading.Thread(target=read)
    for thread in [*threads, reader]:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    reader.join()
    summary = json.loads(path.read_text())
    missing = {f"{name}/{i}" for name in ("main", "watchdog") for i in range(50)} - summary.keys()
    if missing:  # an older copy of the summary renamed over a newer one
        errors.append(f"{len(missing)} summary keys lost")
    tracker.finish()
    return errors, bad_reads


@pytest.mark.timeout(120)
def test_two_threads_writing_the_summary_at_once(tmp_path: Path) -> None:
    """The watchdog's thread records a failure while the main thread logs and writes: no error, no lost key, and a
    reader only ever finds whole JSON (the old fixed `summary.json.tmp` raised FileNotFoundError in most trials)."""
    for trial in range(20):
        run_dir = tmp_path / f"trial_{trial}"
        assert _summary_race(run_dir) == ([], []), f"trial {trial}"
        assert [p.name for p in run_dir.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_other_ranks_do_nothing(tmp_path: Path) -> None:
    tracker = build_tracker(LoggerConfig(backend="wandb"), CONFIG, tmp_path / "r1", rank=1)
    assert isinstance(tracker, NullTracker)
    tracker.log({"a": 1.0}, step=0)
    tracker.summary({"a": 1.0})
    tracker.finish()
    assert not (tmp_path / "r1").exists()


def test_bad_table_row_names_the_table(tmp_path: Path) -> None:
    tracker = build_tracker(LoggerConfig(backend="none"), CONFIG, tmp_path)
    with pytest.raises(ValueError, match=r"forgetting.*row 1"):
        tracker.log_table("forgetting", ["lang", "delta_pp"], [["ko", 1.0], ["en"]])


def test_wandb_offline_runs_per_job(tmp_path: Path) -> None:
    """Two jobs in one process (as in a Hydra multirun): one finished offline run dir each, with the metrics."""
    for job in range(2):
        run_dir = tmp_path / f"job{job}"
        cfg = LoggerConfig(backend="wandb", group="g", tags=["mix_sweep"])
        tracker = build_tracker(cfg, {**CONFIG, "seed": job}, run_dir)
        assert tracker.wandb_run is not None and tracker.wandb_run.settings.mode == "offline"
        tracker.log({"train/loss": 3.0 - job, "sys/peak_alloc_gib": 1.5}, step=5)
        tracker.log_table("forgetting", ["lang", "delta_pp"], [["ko", -1.0]])
        tracker.summary({"eval/lang/ko/acc": 0.25})
        tracker.finish()
        history = _history(run_dir)
        assert history[0]["train/loss"] == 3.0 - job and history[0]["_step"] == 5
        assert any(key.startswith("forgetting/") for row in history for key in row)  # the W&B Table
        kinds = [rec.WhichOneof("record_type") for rec in _wandb_records(run_dir)]
        assert "exit" in kinds  # wandb.finish() closed this job's run
        run_rec = next(rec.run for rec in _wandb_records(run_dir) if rec.WhichOneof("record_type") == "run")
        assert run_rec.run_group == "g" and "mix_sweep" in run_rec.tags
        assert {item.key: json.loads(item.value_json) for item in run_rec.config.update}["seed"] == job


def test_online_without_key_falls_back_offline(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert not wandb_api_key_present()
    with caplog.at_level(logging.WARNING, logger="medtune.runtime.tracking"):
        tracker = build_tracker(LoggerConfig(backend="wandb", mode="online"), CONFIG, tmp_path)
    assert tracker.wandb_run.settings.mode == "offline"
    assert "no W&B key" in caplog.text
    tracker.finish()


def test_netrc_key_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "netrc2"
    path.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    path.chmod(0o600)
    monkeypatch.setenv("NETRC", str(path))
    assert wandb_api_key_present()


@pytest.fixture
def silent_server() -> str:
    """A loopback server that accepts connections and never answers: the worst case, a hanging network."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(srv.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    srv.close()
    for conn in held:
        conn.close()


@pytest.mark.parametrize("server", ["refused", "silent"])
def test_online_unreachable_neither_blocks_nor_crashes(
    server: str, silent_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Port 9 (discard) on loopback refuses at once; the silent server makes every request wait for its timeout.
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9" if server == "refused" else silent_server)
    monkeypatch.setenv("WANDB_API_KEY", "f" * 40)
    cfg = LoggerConfig(backend="wandb", mode="online", init_timeout_s=3.0, finish_timeout_s=3.0)
    start_s = time.monotonic()
    tracker = build_tracker(cfg, CONFIG, tmp_path)
    tracker.log({"train/loss": 1.0}, step=1)
    tracker.summary({"eval/lang/en/acc": 0.5})
    tracker.finish()
    elapsed_s = time.monotonic() - start_s
    assert elapsed_s < 20, f"W&B blocked training for {elapsed_s:.1f} s"
    assert json.loads((tmp_path / "summary.json").read_text())["eval/lang/en/acc"] == 0.5
    # The run is not lost: it fell back to an offline run that `wandb sync` can upload later.
    assert _history(tmp_path)[0]["train/loss"] == 1.0


class _BrokenRun:
    def __init__(self) -> None:
        self.calls = 0

    def log(self, *args: object, **kwargs: object) -> None:
        self.calls += 1
        raise ConnectionError("service died")


def test_wandb_error_mid_run_degrades_to_local(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broken = _BrokenRun()
    tracker = Tracker(tmp_path, "wandb", broken)
    with caplog.at_level(logging.WARNING, logger="medtune.runtime.tracking"):
        for step in range(3):
            tracker.log({"train/loss": float(step)}, step=step)
    assert broken.calls == 1 and tracker.wandb_run is None
    assert caplog.text.count("W&B log failed") == 1
    tracker.finish()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_a_resumed_run_continues_its_wandb_run(tmp_path: Path) -> None:
    """The run dir keeps its W&B run id; a resume continues that run, a fresh start in another dir gets its own."""
    ids = []
    for run_dir, resume in ((tmp_path / "run", False), (tmp_path / "run", True), (tmp_path / "other", False)):
        tracker = build_tracker(LoggerConfig(backend="wandb"), CONFIG, run_dir, resume=resume)
        ids.append(tracker.wandb_run.id)
        assert (run_dir / "wandb_run_id.txt").read_text().strip() == tracker.wandb_run.id
        tracker.finish()
    assert ids[0] == ids[1] != ids[2]


def test_wandb_draws_the_watch_against_the_training_step(tmp_path: Path) -> None:
    """watch/, guard/ and keep/ are defined on watch/step, so a panel over a sweep's runs shares one step axis."""
    tracker = build_tracker(LoggerConfig(backend="wandb"), CONFIG, tmp_path)
    for step in (10, 20):
        tracker.log({"train/loss": 1.0}, step=step)
        tracker.log({"watch/step": step, "watch/lang/ko/delta_gold_ll": -0.01 * step}, step=step)
    tracker.finish()
    records = _wandb_records(tmp_path)
    metrics = {r.metric.glob_name or r.metric.name: r.metric.step_metric for r in records if r.HasField("metric")}
    assert {metrics[f"{p}/*"] for p in ("watch", "guard", "keep")} == {"watch/step"}
    rows = [row for row in _history(tmp_path) if "watch/lang/ko/delta_gold_ll" in row]
    assert [(row["watch/step"], row["watch/lang/ko/delta_gold_ll"]) for row in rows] == [(10, -0.1), (20, -0.2)]
