"""lm-eval's git lookup, made silent: outside a git checkout (an installed medtune) a run prints no git error."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import REPO

from medtune.eval.scoring import quiet_git_describe


def test_git_describe_is_silent_outside_a_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no checkout above tmp_path either
    monkeypatch.chdir(tmp_path)
    assert quiet_git_describe() is None
    assert capfd.readouterr().err == ""  # git's "fatal: not a git repository" went nowhere


def test_git_describe_names_the_commit_inside_a_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    if subprocess.run(["git", "rev-parse"], capture_output=True).returncode != 0:
        pytest.skip("this copy of medtune is not a git checkout")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    described = quiet_git_describe()
    assert described and (described.startswith(head[:7]) or head[:7] in described)
