"""The README holds together: links inside it lead to a heading, the worked example shows the shipped config, the
commands of "Your own data" run from a fresh directory with the config folder the section builds, and every other
command it shows still parses: `make` targets exist, `python -m medtune.<cmd>` flags exist in that command's argparse,
config overrides compose against the schema, and the paths it names are in the repository."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from own_config import write_exam

from medtune.config import compose
from medtune.config.datasets import DatasetConfig
from medtune.config.location import ENV


def readme() -> str:
    return (REPO / "README.md").read_text(encoding="utf-8")


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation out, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def own_data_section() -> str:
    """README's "Your own data" section, up to the next `## ` heading outside a code block."""
    text = readme()
    start = text.index("## Your own data, in any language")
    blanked = re.sub(r"```.*?```", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=re.S)  # same offsets
    return text[start : blanked.index("\n## ", start)]


def code_blocks(section: str) -> list[tuple[str, str | None, str]]:
    """(language, the `*.yaml` file a yaml block's caption names or None, body) of each fenced block, in order."""
    blocks = []
    for match in re.finditer(r"```(\w*)\n(.*?)```", section, re.S):
        caption = section[: match.start()].rstrip().rsplit("\n\n", 1)[-1]
        files = re.findall(r"`([\w/.]+\.yaml)`", caption) if match.group(1) == "yaml" else []
        blocks.append((match.group(1), files[-1] if files else None, match.group(2)))
    return blocks


def test_every_anchor_link_names_a_heading() -> None:
    text = readme()
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

    text = readme()
    commands = re.findall(r"^python -m medtune\.search (.+?)(?:\s+#.*)?$", text, re.M)
    assert len(commands) >= 2
    for command in commands:
        mine, rest = split_overrides(command.split())
        cfg = compose_search(mine)
        assert compose([*cfg.train, *rest]).data_mix.weights[cfg.vary] > 0, command


def shown_commands(text: str) -> list[str]:
    """Every command README shows: the lines of its bash/sh blocks (continuations joined, comments dropped) outside
    "Your own data" (run above), and the inline `python -m medtune...`, `make ...` and `torchrun ...` spans of its
    prose that are whole commands (with arguments, and no `...` or `<placeholder>` standing for a part)."""
    text = text.replace(own_data_section(), "")
    commands = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = re.split(r"\s#|^#", line, maxsplit=1)[0].strip()
            commands += [command] if command else []
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`((?:python -m medtune|make |torchrun )[^`]*)`", prose):
        if "..." not in span and "<" not in span and len(span.split()) > 3:  # not the bare name of a command
            commands.append(" ".join(span.split()))
    return list(dict.fromkeys(commands))


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z-]+):", (REPO / "Makefile").read_text(encoding="utf-8"), re.M))


MAKE_RUNS = {"demo": "train", "train": "train", "sweep": "train"} | {t: t for t in ("export", "report", "bench")}
RUNS = ("medtune.train", "medtune.evaluate")


def as_python(command: str) -> list[str]:
    """The words of a command, placeholders filled: a `make` target that runs medtune and a torchrun launch become
    the `python -m medtune...` they run; any other command is left as it is."""
    words = [w for w in shlex.split(re.sub(r"<[^>]*>", "x", command)) if w != "..."]
    if words[0] == "make":
        assert words[1] in make_targets(), f"{command}: no target {words[1]} in the Makefile"
        env = dict(w.split("=", 1) for w in words[2:])
        if words[1] in MAKE_RUNS:
            dir_ = [env["DIR"]] if "DIR" in env else []
            return ["python", "-m", f"medtune.{MAKE_RUNS[words[1]]}", *dir_, *shlex.split(env.get("ARGS", ""))]
    if words[0] == "torchrun" and "-m" in words:
        return ["python", *words[words.index("-m") :]]
    return words


class Parsed(Exception):
    """Raised instead of running a command once its outermost argparse parser has read the arguments."""


def parse_only(main: typing.Callable, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The arguments argparse left over when `main(argv)` parsed them (options not abbreviated); a bad value or a
    missing argument exits."""
    real = argparse.ArgumentParser.parse_known_args
    depth: list[argparse.ArgumentParser] = []

    def parse(self: argparse.ArgumentParser, args: typing.Any = None, namespace: typing.Any = None) -> typing.Any:
        depth.append(self)
        self.allow_abbrev = False  # README spells each option out: `--effect` for `--effect-pp` is stale
        try:
            result = real(self, args, namespace)
        finally:
            depth.pop()
        if not depth:
            raise Parsed(result[1])
        return result

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_known_args", parse)
        with pytest.raises(Parsed) as parsed:
            main(argv)
    return parsed.value.args[0]


def first_of_sweep(override: str) -> str:
    """`seed=0,1,2` -> `seed=0` (a multirun's first job); a list value `[a,b]` is kept whole."""
    key, _, value = override.partition("=")
    first = re.split(r",(?![^\[]*\])", value)[0]
    return f"{key}={first}"


def check_command(words: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """One `python -m medtune.<cmd> ...`: train/evaluate compose (a sweep's first job), memory and report --plan
    run (no torch, a second), search composes its search and training, the others' options parse."""
    module, args = words[2], words[3:]
    if module in RUNS:
        sweep = "-m" in args or "--multirun" in args
        overrides = [a for a in args if a not in ("-m", "--multirun", "--help", "--cfg", "job")]
        compose([first_of_sweep(o) if sweep else o for o in overrides])
        return
    assert (REPO / module.replace(".", "/") / "__main__.py").exists(), f"no command {module}"
    main = __import__(f"{module}.cli", fromlist=["main"]).main
    if module == "medtune.memory":  # no argparse: its own parsing, then the plan (no torch, a second)
        assert not main(args)
    elif module == "medtune.search":
        from medtune.config.search import compose_search, split_overrides

        mine, rest = split_overrides(args)
        compose([*compose_search(mine).train, *rest])
    else:
        left = parse_only(main, args, monkeypatch)
        assert not [a for a in left if a.startswith("-")], f"unknown options {left}"
        if module == "medtune.data":
            compose([a for a in [*args, *left] if "=" in a and not a.startswith("-")])
        if "--plan" in args:
            assert main(args) == 0


def test_every_command_shown_parses(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Each `make`, `python -m medtune...` and `torchrun` command README shows: the target, the module and its
    options exist, its config overrides compose, `medtune.memory` and `medtune.report --plan` run."""
    monkeypatch.delenv(ENV, raising=False)
    checked = []
    for command in shown_commands(readme()):
        words = as_python(command)
        if words[:2] == ["python", "-m"] and words[2].startswith("medtune"):
            try:
                check_command(words, monkeypatch)
            except (Exception, SystemExit) as err:
                pytest.fail(f"README: `{command}`: {type(err).__name__}: {err}\n{capsys.readouterr().err[-500:]}")
            checked.append(words[2])
        capsys.readouterr()
    assert set(checked) >= {f"medtune.{m}" for m in ("train", "evaluate", "memory", "report", "export", "bench")}
    assert {"medtune.data", "medtune.search"} <= set(checked) and len(checked) >= 25, checked


def test_the_plan_example_prints_what_readme_shows(capsys: pytest.CaptureFixture) -> None:
    """The `--plan` block's commented lines are the command's own output."""
    from medtune.report.cli import main

    block = next(b for b in re.findall(r"```bash\n(.*?)```", readme(), re.S) if "--plan" in b)
    command, *shown = block.strip().splitlines()
    assert main(shlex.split(command)[3:]) == 0
    printed = [line.strip() for line in capsys.readouterr().out.splitlines()]
    assert shown and all(line.lstrip("# ") in printed for line in shown), printed


def test_every_path_named_is_in_the_repository() -> None:
    """Links and `code` paths under the repository's folders exist; `pkg/module.py` names a medtune module."""
    text = readme()
    paths = set(re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text))  # relative links, not http(s)://
    paths |= set(re.findall(r"(?<![\w/.])((?:medtune|tests|experiments|docs|notebooks)/[\w./-]*\w/?)", text))
    missing = [p for p in paths if not (REPO / p).exists()]
    modules = set(re.findall(r"`([a-z_]+/[\w/]+\.py)`", text))
    missing += [m for m in modules if m.split("/")[0] in PACKAGES and not (REPO / "medtune" / m).exists()]
    assert len(paths) > 50 and not missing, sorted(missing)


PACKAGES = {p.name for p in (REPO / "medtune").iterdir() if (p / "__init__.py").exists()}


PLAIN_MAPPINGS = {"datasets": DatasetConfig}  # a `dict[str, Any]` field whose values the schema checks itself


def schema_has(schema: type, key: str) -> bool:
    """Whether a dotted config key is a field of the schema: dataclasses walked, a dict's keys free."""
    head, _, rest = key.partition(".")
    kind = typing.get_type_hints(schema).get(head) if dataclasses.is_dataclass(schema) else None
    if kind is None:
        return False
    if typing.get_origin(kind) not in (None, dict, list):  # `X | None`: its non-None member
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if typing.get_origin(kind) is dict:  # `data.datasets.<name>.<field>`, `eval.task_limits.<task>`
        value, rest = typing.get_args(kind)[1], rest.partition(".")[2]
        return not rest or schema_has(PLAIN_MAPPINGS.get(head, value), rest)
    return not rest or schema_has(kind, rest)


MEANT_WRONG = {"+trainer.max_step=5"}  # README shows what a mistyped key gets


def test_every_override_in_the_prose_names_a_setting() -> None:
    """Each `key.sub=value` README's prose names (`trainer.kernels=auto`) is a key of the run's schema, or the
    search's (`search.`); Hydra's own (`hydra.`) aside."""
    from medtune.config.search import SearchConfig
    from medtune.config.training import TrainConfig

    prose = re.sub(r"```.*?```", "", readme(), flags=re.S)
    spans = " ".join(re.findall(r"`([^`]+)`", prose)).split()
    overrides = {w for w in spans if re.fullmatch(r"\+?[a-z_]+(\.[a-z_0-9]+)+=\S+", w)} - MEANT_WRONG
    keys = {w.lstrip("+").split("=")[0] for w in overrides if not w.startswith("hydra.")}
    unknown = [k for k in keys if not (schema_has(SearchConfig, k[7:]) if k.startswith("search.") else
                                       schema_has(TrainConfig, k))]  # fmt: skip
    assert len(keys) > 40 and not unknown, sorted(unknown)


def test_the_configuration_table_lists_every_shipped_choice() -> None:
    """README's "Configuration" table: each group's choices are the files of medtune/conf/<group>/."""
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \|", readme().split("\n## Configuration\n", 1)[1].split("\n## ")[0], re.M)
    assert {group for group, _ in rows} >= {"model", "quantization", "sharding", "packing", "data_mix", "eval"}
    for group, choices in rows:
        shipped = {p.stem for p in (REPO / "medtune" / "conf" / group).glob("*.yaml")}
        assert set(re.findall(r"`(\w+)`", choices)) == shipped, group
