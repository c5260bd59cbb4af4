"""The memory keys a phase records (runtime/peak_memory.py), without a GPU: torch's allocator counters stubbed."""

from __future__ import annotations

import pytest
import torch

from medtune.runtime.peak_memory import memory_metrics

GIB = 1024**3


def test_a_phase_records_its_peaks_and_what_it_leaves_allocated(monkeypatch: pytest.MonkeyPatch) -> None:
    """The load phase's peak less what it leaves allocated is what loading held above the loaded model (issue 35)."""
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 5 * GIB)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 6 * GIB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2 * GIB)
    out = memory_metrics(torch.device("cuda"), "load")
    assert out["sys/load/peak_alloc_gib"] == 5.0 and out["sys/load/peak_reserved_gib"] == 6.0
    assert out["sys/load/alloc_gib"] == 2.0 and out["sys/load/cpu_rss_gib"] > 0
    assert set(memory_metrics(torch.device("cpu"), "train")) == {"sys/train/cpu_rss_gib"}  # no allocator on a CPU
