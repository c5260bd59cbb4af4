"""The README holds together: links inside it lead to a heading, the worked example shows the shipped config, and
the commands of "Your own data" run from a fresh directory with the config folder the section builds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO
from own_config import write_exam

from medtune.config import compose
from medtune.config.location import ENV


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation out, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def own_data_section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return text.split("## Your own data, in any language", 1)[1].split("\n## ", 1)[0]


def code_blocks(section: str) -> list[tuple[str, str | None, str]]:
    """(language, the `*.yaml` file a yaml block's caption names or None, body) of each fenced block, in order."""
    blocks = []
    for match in re.finditer(r"```(\w*)\n(.*?)```", section, re.S):
        caption = section[: match.start()].rstrip().rsplit("\n\n", 1)[-1]
        files = re.findall(r"`([\w/.]+\.yaml)`", caption) if match.group(1) == "yaml" else []
        blocks.append((match.group(1), files[-1] if files else None, match.group(2)))
    return blocks


def test_every_anchor_link_names_a_heading() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    outside_code = re.sub(r"```.*?```", "", text, flags=re.S)
    headings = {anchor(line.lstrip("#")) for line in outside_code.splitlines() if line.startswith("#")}
    links = set(re.findall(r"\]\(#([^)]+)\)", outside_code))
    assert links and links <= headings, sorted(links - headings)


def test_the_own_data_example_shows_the_shipped_config() -> None:
    """README "Your own data": the blocks captioned medtune/conf/... are those files (the schema line left out)."""
    shown = [(path, yaml.safe_load(body)) for _, path, body in code_blocks(own_data_section()) if path]
    shipped = [(path, block) for path, block in shown if path.startswith("medtune/conf/")]
    assert [path for path, _ in shipped] == [
        "medtune/conf/experiment/own_data_ja.yaml",
        "medtune/conf/data_mix/own_data_ja.yaml",
    ]
    for path, block in shipped:
        real = yaml.safe_load((REPO / path).read_text(encoding="utf-8"))
        assert block == {k: v for k, v in real.items() if k != "defaults" or "defaults" in block}, path


def _shell(body: str) -> str:
    """A README shell block as run here: this python; train and evaluate only compose (`--cfg job`)."""
    lines = []
    for line in body.splitlines():
        command = line.split("  #")[0].rstrip()
        if command.startswith(("python -m medtune.train", "python -m medtune.evaluate")):
            command += " --cfg job"
        lines.append(command.replace("python -m", f"{sys.executable} -m", 1))
    return "\n".join(["set -eu", *lines])


def test_the_own_folder_commands_run_from_a_fresh_directory(tmp_path: Path) -> None:
    """Each shell block runs in order and each `my_config/...` block is written where its caption says."""
    data = tmp_path / "data"  # MEDTUNE_DATA_DIR, holding the exam file the README describes
    data.mkdir()
    write_exam(data / "vi_exam.jsonl")
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env |= {"PYTHONPATH": str(REPO), "MEDTUNE_DATA_DIR": str(data), "MEDTUNE_CACHE_DIR": str(tmp_path / "cache")}
    cwd = tmp_path / "home"
    cwd.mkdir()
    out, written = "", []
    for language, path, body in code_blocks(own_data_section()):
        if path and path.startswith("my_config/"):
            (cwd / path).write_text(body, encoding="utf-8")  # the folders come from the README's mkdir
            written.append(path)
        elif language == "sh":
            proc = subprocess.run(["bash", "-c", _shell(body)], cwd=cwd, env=env, capture_output=True, text=True,
                                  timeout=600)  # fmt: skip
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            out += proc.stdout
    assert written == ["my_config/experiment/own_vi.yaml", "my_config/data_mix/own_vi.yaml"]
    prepared = [line.split()[:5] for line in out.splitlines() if line.startswith("vi_exam ")]
    assert prepared == [["vi_exam", "train", "vi", "train", "18"], ["vi_exam", "test", "vi", "eval", "6"]]
    assert out.count("vi_exam:train: 1.0") == 2  # train's and evaluate's composed data_mix
    assert "adapter: runs/2026-12-07/10-00-00_own_vi/adapter" in out


def test_the_commands_in_the_section_prose_compose() -> None:
    """Inline `python -m medtune.<train|evaluate|data prepare|memory> ...` commands compose as written."""
    section = re.sub(r"```.*?```", "", own_data_section(), flags=re.S)
    commands = re.findall(r"`python -m medtune\.(?:train|evaluate|data prepare|memory)\s([^`]+)`", section)
    assert len(commands) >= 3
    for command in commands:
        overrides = [item for item in command.split() if "=" in item and not item.startswith("-")]
        assert compose(overrides).run_name, command


def test_the_search_commands_compose() -> None:
    """The `python -m medtune.search ...` lines of the README compose: the search and the training it names."""
    from medtune.config.search import compose_search, split_overrides

    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"^python -m medtune\.search (.+?)(?:\s+#.*)?$", text, re.M)
    assert len(commands) >= 2
    for command in commands:
        mine, rest = split_overrides(command.split())
        cfg = compose_search(mine)
        assert compose([*cfg.train, *rest]).data_mix.weights[cfg.vary] > 0, command
