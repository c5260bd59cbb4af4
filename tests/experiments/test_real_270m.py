"""experiments/gpu/real_270m.sh in its dry mode (R270_DRY=1: tiny model, CPU, the built-in sample): the search
driver started as on the device machine (setup, `search`, `wait`) runs the proxy runs, writes search.md, then the
confirming run, and `wait` brings everything back in $OUT/real_270m.tar.gz."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import REPO

SCRIPT = "experiments/gpu/real_270m.sh"


@pytest.mark.timeout(300)
def test_the_dry_search_driver_writes_search_md_and_the_confirmation(tmp_path: Path) -> None:
    """Two proxy runs side by side, then the confirming run: ~75 s on 2 CPU cores shared with other jobs."""
    root, out = tmp_path / "root", tmp_path / "out"
    env = {**os.environ, "R270_DRY": "1", "R270_ROOT": str(root), "OUT": str(out), "WANDB_MODE": "offline"}
    steps = f"bash {SCRIPT} setup && bash {SCRIPT} search && bash {SCRIPT} wait 240"
    proc = subprocess.run(["bash", "-c", steps], cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    search = root / "runs" / "search" / "ratio_ko_270m"
    text = (search / "search.md").read_text()
    assert ("**Recommended**: en:ko=" in text) != ("**No safe share**" in text)
    record = json.loads((search / "search.json").read_text())
    assert record["finished"] == 2 and record["confirmed"]["status"] == "ok", record
    assert "## Confirming run" in text and record["confirmed"]["name"] in text
    rc = (root / "runs" / "rc.txt").read_text()
    assert "search rc=0" in rc and "search_confirm rc=0" in rc and "lora" not in rc  # only the driver started
    assert "still running" not in proc.stdout and "-- search: 2 proxy runs with a summary" in proc.stdout
    with tarfile.open(out / "real_270m.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"runs/search/ratio_ko_270m/search.md", "runs/search/ratio_ko_270m/search.json"} <= names
    confirm = "runs/search/ratio_ko_270m/confirm/" + record["confirmed"]["name"] + "/summary.json"
    assert confirm in names and "runs/search.log.gz" in names


def test_a_bad_verb_is_refused_with_the_usage(tmp_path: Path) -> None:
    env = {**os.environ, "R270_DRY": "1", "R270_ROOT": str(tmp_path), "OUT": str(tmp_path / "out")}
    proc = subprocess.run(["bash", SCRIPT, "nope"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage:" in proc.stderr and "wait [SECONDS]" in proc.stderr
