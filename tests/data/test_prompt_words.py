"""Prompt words per language: the built-in Korean and English ones, extended in config, neutral when missing."""

from __future__ import annotations

import logging

import pytest

from medtune.config import ConfigError, DataConfig
from medtune.data.prompts import format_prompt, prompt_words, render_mcq_prompt
from medtune.data.schema import mcq, open_qa
from medtune.eval.tasks import PROMPT_VERSION

JA = mcq("x", "test", "1", "ja", "s", "正常な血清ナトリウム値は?", ["120", "140"], 1)
MI = mcq("x", "test", "2", "mi", "s", "He aha te konutai toto noa?", ["120", "140"], 1)  # Maori: no test else uses it
JA_WORDS = {"ja": {"question": "質問", "answer": "答え"}}


def test_the_built_in_prompts_are_the_papers() -> None:
    """The paper's prompts (and so the base-score cache keys) do not move: this hash is the one before issue 20."""
    assert PROMPT_VERSION == "mcq-c5c01cb317ff"


def test_config_words_give_a_language_its_own_prompt() -> None:
    words = prompt_words(DataConfig(prompt_words=JA_WORDS))
    assert format_prompt(JA, words=words) == ("質問: 正常な血清ナトリウム値は?\nA. 120\nB. 140\n答え:", " B. 140")
    qa = open_qa("x", "train", "3", "ja", "s", "熱が出たら?", "休む")
    assert format_prompt(qa, words=words)[0].endswith("答え:")  # open_answer follows answer unless given
    pt = prompt_words(DataConfig(prompt_words={"pt": {"question": "Pergunta", "answer": "Resposta"}}))
    brazil = mcq("x", "test", "4", "pt-BR", "s", "Sódio normal?", ["120", "140"], 1)
    assert render_mcq_prompt(brazil, words=pt).startswith("Pergunta: ")  # pt-BR falls back to pt
    english = prompt_words(DataConfig(prompt_words={"en": {"answer": "Correct option"}}))
    assert render_mcq_prompt(mcq("x", "t", "5", "en", "s", "q?", ["a", "b"], 0), words=english).endswith(
        "\nCorrect option:"
    )


def test_a_language_without_words_uses_the_neutral_template_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="medtune.data.prompts"):
        first = render_mcq_prompt(MI)
        render_mcq_prompt(MI)
    assert first == "Question: He aha te konutai toto noa?\nA. 120\nB. 140\nAnswer:"
    said = [r for r in caplog.records if "no prompt words for language 'mi'" in r.getMessage()]
    assert len(said) == 1 and "data.prompt_words.mi" in said[0].getMessage()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"japanese": {"question": "質問"}}, "data.prompt_words.japanese: 'japanese' is not a language code"),
        ({"ja": {"questoin": "質問"}}, r"data.prompt_words.ja has \['questoin'\]"),
        ({"ja": {"answer": " "}}, "data.prompt_words.ja.answer is empty"),
    ],
)
def test_bad_words_are_named(table: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DataConfig(prompt_words=table)
