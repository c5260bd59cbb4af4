"""Open languages: BCP 47 codes checked and normalised everywhere a language is named; ratios over N languages."""

from __future__ import annotations

import pytest

from medtune.config import ConfigError, DataMixConfig, compose, language_name, normalize_language, parse_ratio


@pytest.mark.parametrize(
    ("code", "normal"),
    [("ja", "ja"), ("JA", "ja"), ("zh-hant", "zh-Hant"), ("pt-br", "pt-BR"), ("es-419", "es-419"), ("fil", "fil"),
     ("sr-Latn-RS", "sr-Latn-RS"), (" vi ", "vi")],
)  # fmt: skip
def test_codes_are_normalised(code: str, normal: str) -> None:
    assert normalize_language(code, "k") == normal


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        ("japanese", "Japanese is 'ja'"),
        ("Korean", "Korean is 'ko'"),
        ("JP_jp", "separated by '-', not '_'. JP is a country code; its language is probably 'ja'"),
        ("jp", "'jp' is no ISO 639-1 code. JP is a country code; its language is probably 'ja'"),
        ("xx", "'xx' is no ISO 639-1 code."),
        ("e n", "letters and digits in subtags"),
        ("zh-Hant-x", "the subtag 'x' is no script, region or variant"),
    ],
)
def test_a_name_or_a_country_is_not_a_code(code: str, hint: str) -> None:
    with pytest.raises(ConfigError) as err:
        normalize_language(code, "data.datasets.mine.language")
    assert str(err.value).startswith(f"data.datasets.mine.language: {code!r} is not a language code") and hint in str(
        err.value
    )
    assert "BCP 47" in str(err.value)


def test_language_names() -> None:
    assert [language_name(c) for c in ("ko", "en", "ja", "zh-Hant", "fil")] == [
        "Korean", "English", "Japanese", "Chinese (Hant)", "fil"
    ]  # fmt: skip


def test_named_ratios_take_any_number_of_languages() -> None:
    assert parse_ratio("en:ko:ja=10:3:3", []) == {"en": 10.0, "ko": 3.0, "ja": 3.0}
    assert parse_ratio("EN : zh-hant = 1 : 2", []) == {"en": 1.0, "zh-Hant": 2.0}
    sources = {"en": {"e:train": 1}, "ko": {"k:train": 1}, "JA": {"j:train": 1}}
    cfg = DataMixConfig(sources=sources, ratio="en:ko:ja=2:1:1")
    assert cfg.weights == {"en": 2.0, "ko": 1.0, "ja": 1.0} and list(cfg.sources) == ["en", "ko", "ja"]
    assert cfg.languages() == ["en", "ko", "ja"]
    # the unnamed form keeps its meaning: English then Korean for two, the sources' order for more
    assert DataMixConfig(sources={"ko": {"k:t": 1}, "en": {"e:t": 1}}, ratio="10:3").weights == {"en": 10, "ko": 3}
    assert DataMixConfig(sources=sources, ratio="2:1:1").weights == {"en": 2.0, "ko": 1.0, "ja": 1.0}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": "en:ko:ja=10:3"}, r"names the languages \['en', 'ko', 'ja'\] but gives 2 non-negative numbers"),
        ({"ratio": "en:en=1:1"}, "each language once"),
        ({"ratio": "en:ko:ja=1:-1:1"}, "gives no valid non-negative numbers"),
        ({"ratio": "english:ko=1:1"}, "data_mix.ratio: 'english' is not a language code"),
        ({"ratio": "10:3"}, r"not of the form 'en:ko'.*or name the languages: 'en:ko:ja=10:3:3'"),
        ({"weights": {"en": 1, "EN": 1}}, "data_mix.weights names the language 'en' twice"),
    ],
)
def test_bad_ratios_and_language_keys_are_named(kwargs: dict, message: str) -> None:
    sources = {"en": {"e:train": 1}, "ko": {"k:train": 1}, "ja": {"j:train": 1}}
    with pytest.raises(ConfigError, match=message):
        DataMixConfig(sources=sources, **kwargs)


def test_a_source_key_that_is_not_a_language_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"data_mix\.sources\.japanese: 'japanese' is not a language code"):
        DataMixConfig(sources={"japanese": {"j:train": 1}}, weights={"japanese": 1})


def test_the_worked_example_composes_to_three_languages() -> None:
    cfg = compose(["+experiment=own_data_ja"])
    assert cfg.data_mix.weights == {"en": 2.0, "ko": 1.0, "ja": 1.0} and cfg.data_mix.unit == "tokens"
    assert set(cfg.data.datasets) == {"ja_exam", "ja_instructions"} and cfg.data.datasets["ja_exam"].language == "ja"
    assert "ja_exam" in cfg.eval.tasks and cfg.data.prompt_words["ja"]["question"] == "質問"
    assert compose(["+experiment=own_data_ja", "data_mix.ratio='en:ko:ja=1:1:2'"]).data_mix.weights["ja"] == 2.0
