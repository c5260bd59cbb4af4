"""The wheel runs: built from the repo, installed into a fresh venv outside it, it trains and evaluates a tiny model
from a directory of the user's own with a config folder of the user's own (issue 31).

The venv has --system-site-packages (torch and the rest come from this machine, nothing is downloaded) and the wheel
is installed with --no-index; the commands run with the venv's python, PYTHONPATH cleared, so the medtune they
import is the wheel's, not this checkout (asserted).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO
from own_config import write_own_folder

from medtune.config.location import ENV

TINY = [
    "model=tiny_llama",
    "trainer.device=cpu",
    "trainer.max_steps=2",
    "trainer.progress_bar=false",
    "packing.max_seq_len=512",
    "logger=jsonl",
    "eval.limit=4",
    "eval.watch_every=0",
]


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout_s: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def build_wheel(tmp: Path) -> Path:
    """`pip wheel` of a copy of the package (setuptools writes build/ and *.egg-info beside the sources)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "medtune", src / "medtune", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", "dist"]
    _run([*cmd, str(src)], tmp, {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}, 300)
    (wheel,) = (tmp / "dist").glob("medtune-*.whl")
    return wheel


def test_the_wheel_carries_the_config_and_runs_outside_the_repo(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {str(p.relative_to(REPO)) for p in (REPO / "medtune" / "conf").rglob("*.yaml")}
    assert shipped and shipped <= names, sorted(shipped - names)

    venv = tmp_path / "venv"
    _run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], tmp_path, dict(os.environ)
    )
    python = str(venv / "bin" / "python")
    # the venv's python runs this machine's pip (a system site-package) and installs into the venv
    install = ["install", "--no-deps", "--no-index", "--ignore-installed", "--quiet", str(wheel)]
    _run([python, "-m", "pip", *install], tmp_path, {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}, 300)

    home = tmp_path / "hospital"  # the user's own directory: no repo, no conf/ around it
    home.mkdir()
    write_own_folder(home)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", ENV, "MEDTUNE_DATA_DIR", "MEDTUNE_RUNS_DIR")}
    env |= {"MEDTUNE_CACHE_DIR": str(tmp_path / "cache"), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    where = _run([python, "-c", "import medtune; print(medtune.__file__)"], home, env).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the wheel's medtune, not the checkout's editable install

    train = _run([python, "-m", "medtune.train", "--config-dir", "my_config", "+experiment=own_vi", *TINY,
                  "hydra.run.dir=runs/own_vi"], home, env)  # fmt: skip
    run = home / "runs" / "own_vi"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["run/status"] == "ok" and summary["train/loss"] > 0
    assert 0 <= summary["eval/vi_exam/acc"] <= 1 and summary["eval/vi_exam/n"] == 4
    assert (run / "eval" / "metrics.json").is_file() and (run / "adapter" / "adapter_config.json").is_file()

    evaluate = _run([python, "-m", "medtune.evaluate", "+experiment=own_vi", *TINY, f"eval.adapter={run / 'adapter'}",
                     "hydra.run.dir=runs/own_vi_eval"], home, env | {ENV: "my_config"})  # fmt: skip
    metrics = json.loads((home / "runs" / "own_vi_eval" / "eval" / "metrics.json").read_text())
    for key in ("eval/vi_exam/n", "eval/vi_exam/acc", "eval/vi_exam/gold_ll_letter"):  # the saved adapter, reloaded
        assert metrics[key] == pytest.approx(summary[key]), key
    for proc in (train, evaluate):
        assert "fatal: not a git repository" not in proc.stderr  # lm-eval's git lookup, outside a checkout
    _own_ids_trained_mix_report_and_export(python, home, run, summary, env)


def _own_ids_trained_mix_report_and_export(python: str, home: Path, run: Path, summary: dict, env: dict) -> None:
    """The rest of a hospital's path from the same folder: the file's own ids key the predictions, the record states
    the trained mix beside the planned one, and report and export run from the wheel."""
    (preds,) = [p for p in (run / "eval").glob("*/predictions.jsonl") if p.parent.name != "base"]
    ids = {json.loads(line)["id"] for line in preds.read_text().splitlines()}
    assert ids and all(i.startswith("vi_exam:test:q") for i in ids), sorted(ids)[:3]  # "q7", not "<file stem>-<line>"
    for lang in ("en", "vi"):  # what the loop took (2 steps: less than a pass), beside the plan
        assert summary[f"trained_mix/{lang}/examples"] <= summary[f"data_mix/{lang}/examples"]
    assert 0 < summary["trained_mix/passes"] < 1
    _run([python, "-m", "medtune.report", "runs", "--out", "report"], home, env)
    report = (home / "report" / "report.md").read_text()
    assert "vi" in report and "Trained mix" in report
    _run([python, "-m", "medtune.export", str(run), "--format", "safetensors"], home, env)
    (check,) = run.glob("export/*/export_check.json")
    gate = json.loads(check.read_text())["gate"]
    assert gate["medtune"]["passed"] and gate["probes"]["languages"].get("vi", 0) > 0, gate  # the run's own language
