"""A config folder of the user's own, as the README's "Your own data" builds it: an experiment, a data mix and the
Vietnamese exam file they declare (tests/config/test_location.py, tests/test_wheel.py)."""

from __future__ import annotations

import json
from pathlib import Path

EXPERIMENT = """# @package _global_
defaults:
  - override /data_mix: own_vi
run_name: own_vi
data:
  datasets:
    vi_exam:
      path: {path}
      format: mcq
      language: vi
      holdout: {{fraction: 0.25, seed: 0}}
eval:
  tasks: [vi_exam]
"""
DATA_MIX = """sources:
  en: {"sample_en:train": 1.0}
  vi: {"vi_exam:train": 1.0}
ratio: "en:vi=1:1"
unit: examples
"""


def write_exam(path: Path) -> Path:
    """A 24-question Vietnamese multiple-choice file in the README's row format (answers A, B, C, D in turn)."""
    rows = [
        {"id": f"q{i}", "question": f"Câu hỏi {i}?", "options": ["một", "hai", "ba", "bốn"], "answer": "ABCD"[i % 4]}
        for i in range(24)
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_own_folder(root: Path) -> Path:
    """root/my_config with experiment/own_vi.yaml and data_mix/own_vi.yaml, and the exam file they name."""
    data = write_exam(root / "vi_exam.jsonl")
    folder = root / "my_config"
    (folder / "experiment").mkdir(parents=True)
    (folder / "data_mix").mkdir()
    (folder / "experiment" / "own_vi.yaml").write_text(EXPERIMENT.format(path=data), encoding="utf-8")
    (folder / "data_mix" / "own_vi.yaml").write_text(DATA_MIX, encoding="utf-8")
    return folder
