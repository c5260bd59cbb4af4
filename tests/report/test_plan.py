"""`python -m medtune.report --plan`: the numbers it prints are medtune.eval.power's, bad input exits 2."""

from __future__ import annotations

import pytest
from conftest import REPO

from medtune.eval.power import mcnemar_mde, mcnemar_sample_size, welch_mde, welch_seeds
from medtune.report.cli import main


def test_plan_prints_questions_and_seeds_an_effect_needs(capsys: pytest.CaptureFixture) -> None:
    argv = ["--plan", "--effect-pp", "1.23", "--discordance", "0.1", "--questions", "239"]
    assert main([*argv, "--seeds", "3", "--seed-sd-pp", "0.7"]) == 0
    out = capsys.readouterr().out
    assert f"questions needed: {mcnemar_sample_size(0.0123, 0.1)} (Connor 1987" in out
    assert f"at 239 questions: power 6.0%; minimum detectable effect {100 * mcnemar_mde(239, 0.1):.2f} pp" in out
    assert f"seeds per ratio needed: {welch_seeds(1.23, 0.7)}" in out
    assert f"at 3 seeds a side: power 29.4%; minimum detectable effect {welch_mde(0.7, 3):.2f} pp" in out


def test_plan_from_accuracy_assumes_independent_errors(capsys: pytest.CaptureFixture) -> None:
    assert main(["--plan", "--effect-pp", "2", "--accuracy", "0.5", "--power", "0.9", "--confidence", "0.99"]) == 0
    out = capsys.readouterr().out
    assert "discordance 50.0% (independent errors at accuracy 0.5)" in out and "99% confidence" in out
    assert f"questions needed: {mcnemar_sample_size(0.02, 0.5, 0.99, 0.9)} " in out
    assert "add --seed-sd-pp" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--plan", "--discordance", "0.1"], "--plan needs --effect-pp"),
        (["--plan", "--effect-pp", "1"], "--plan needs --discordance"),
        (["--plan", "--effect-pp", "12", "--discordance", "0.1"], "at most the discordance (10 pp)"),
    ],
)
def test_plan_refuses_what_it_cannot_plan(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().out


def test_without_plan_the_sweep_directory_is_required(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        main([])
    assert stop.value.code == 2 and "give the sweep directory (or --plan)" in capsys.readouterr().err


def test_the_readme_plan_example_is_what_the_command_prints(capsys: pytest.CaptureFixture) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("python -m medtune.report --plan ", 1)[1].split("```", 1)[0]
    command, *shown = block.strip().splitlines()
    assert main(["--plan", *command.split()]) == 0
    out = capsys.readouterr().out
    assert shown and all(line.removeprefix("#").strip() in out for line in shown)
