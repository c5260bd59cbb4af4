"""The README holds together: links inside it lead to a heading, and the worked example shows the shipped config."""

from __future__ import annotations

import re

import yaml
from conftest import REPO


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation out, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_anchor_link_names_a_heading() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    outside_code = re.sub(r"```.*?```", "", text, flags=re.S)
    headings = {anchor(line.lstrip("#")) for line in outside_code.splitlines() if line.startswith("#")}
    links = set(re.findall(r"\]\(#([^)]+)\)", outside_code))
    assert links and links <= headings, sorted(links - headings)


def test_the_own_data_example_shows_the_shipped_config() -> None:
    """README "Your own data": its two YAML blocks are conf/experiment/own_data_ja.yaml and its data_mix."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Your own data, in any language", 1)[1].split("\n## ", 1)[0]
    experiment, data_mix = (yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", section, re.S)[:2])
    assert experiment == yaml.safe_load((REPO / "medtune" / "conf" / "experiment" / "own_data_ja.yaml").read_text())
    shipped = yaml.safe_load((REPO / "medtune" / "conf" / "data_mix" / "own_data_ja.yaml").read_text())
    assert data_mix == {k: v for k, v in shipped.items() if k != "defaults"}
