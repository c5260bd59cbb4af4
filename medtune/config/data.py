"""Config schemas of the data side: data_mix (what the run trains on, in which balance) and data (where the sources
are, how rows are read and guarded). eval is in config/eval.py, logger in config/logger.py, the rest in training.py."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from medtune.config.checks import CACHE_ROOT, ConfigError, check_choice, check_positive
from medtune.config.datasets import check_datasets
from medtune.config.languages import normalize_language


@dataclass
class DataMixConfig:
    """Which training sources, grouped by language, and in what ratio (see README, 'Data mix')."""

    # language -> {"<source>:<split>": weight inside that language}
    sources: dict[str, dict[str, float]] = field(default_factory=dict)
    # language -> weight, e.g. {en: 10, ko: 3}: each language's share of the *unit* in the training set
    weights: dict[str, float] = field(default_factory=dict)
    # shorthand for weights, overriding them when set: "10:3" (English first, then Korean; with sources in more
    # languages, in their order) or with the languages named, "en:ko:ja=10:3:3"
    ratio: str | None = None
    unit: str = "tokens"  # examples | tokens: what the weights and the budget count
    budget: int | None = None  # total training examples or tokens; None = as much as the scarcest source allows
    upsample: bool = False  # allow repeating rows (whole passes over a source) to meet the request
    # with upsample: a source may give at most this many times its rows (or tokens); ~4 epochs of repeated data
    # cost little against unique data (Muennighoff et al. 2023, "Scaling Data-Constrained Language Models")
    max_repeat: float = 4.0
    heldout_frac: float = 0.02  # of each source's selected rows, kept out of training for the eval-loss pass
    seed: int = 0
    # how a language's share is split between its sources: by the weights in `sources` (given), or by each source's
    # size in the unit, so the language's rows are drawn evenly from all its sources (proportional; weight 0 = out)
    source_weighting: str = "given"

    def __post_init__(self) -> None:
        check_choice("data_mix.unit", self.unit, ("examples", "tokens"))
        check_choice("data_mix.source_weighting", self.source_weighting, ("given", "proportional"))
        self.sources = _by_language(self.sources, "data_mix.sources")
        if self.ratio is not None:
            self.weights = parse_ratio(self.ratio, list(self.sources) or ["en", "ko"])
        self.weights = _by_language(self.weights, "data_mix.weights")
        if any(not w >= 0 for w in self.weights.values()):
            raise ConfigError(f"data_mix.weights={dict(self.weights)} has a negative weight; weights must be >= 0.")
        if self.weights and sum(self.weights.values()) <= 0:
            raise ConfigError("data_mix.weights are all zero; give at least one language a positive weight.")
        said = f"data_mix.ratio={self.ratio!r}" if self.ratio is not None else "data_mix.weights"  # what the user set
        unknown = {lang for lang, w in self.weights.items() if w > 0} - set(self.sources)
        if self.sources and unknown:
            raise ConfigError(
                f"{said} names {sorted(unknown)} but data_mix.sources has no data for "
                f"{'it' if len(unknown) == 1 else 'them'} (only {sorted(self.sources)}); add sources in those "
                f"languages to data_mix.sources, or take them out of {said.split('=')[0]} (or give them 0)."
            )
        missing = set(self.sources) - set(self.weights)
        if self.sources and missing:
            raise ConfigError(
                f"data_mix.sources has {sorted(missing)} but {said} gives them no weight; name every language of "
                f"data_mix.sources in {said.split('=')[0]}, with 0 to leave a language out."
            )
        for lang, specs in self.sources.items():
            if any(not w >= 0 for w in specs.values()):
                raise ConfigError(f"data_mix.sources.{lang}={dict(specs)} has a negative weight; use >= 0.")
            if self.weights.get(lang, 0) > 0 and sum(specs.values()) <= 0:
                raise ConfigError(
                    f"data_mix.sources.{lang} has no source with a positive weight but data_mix.weights.{lang}="
                    f"{self.weights[lang]}; add a source or set the language's weight to 0."
                )
        check_positive("data_mix.budget", self.budget, allow_none=True)
        if not self.max_repeat >= 1.0:
            raise ConfigError(f"data_mix.max_repeat={self.max_repeat} must be >= 1 (1 = every row at most once).")
        if not 0.0 <= self.heldout_frac < 0.5:
            raise ConfigError(f"data_mix.heldout_frac={self.heldout_frac} must be in [0, 0.5).")

    def languages(self) -> list[str]:
        """The mix's languages: those with a weight, in weight order, then any other with sources."""
        return list(self.weights) + [lang for lang in self.sources if lang not in self.weights]


def _by_language(table: dict, key: str) -> dict:
    """`table` with each language key as a normalised BCP 47 code ('JA' -> 'ja'); two keys for one code are refused."""
    out: dict = {}
    for lang, value in table.items():
        code = normalize_language(lang, f"{key}.{lang}")
        if code in out:
            raise ConfigError(f"{key} names the language {code!r} twice (as {lang!r} too); merge the two entries.")
        out[code] = value
    return out


def _numbers(text: str) -> list[float]:
    try:
        values = [float(p) for p in text.split(":")]
    except ValueError:
        return []
    return values if all(math.isfinite(v) and v >= 0 for v in values) else []


def parse_ratio(ratio: str, languages: list[str]) -> dict[str, float]:
    """'10:3' -> {'en': 10.0, 'ko': 3.0} (English first, then Korean; else `languages` in order);
    'en:ko:ja=10:3:3' -> {'en': 10.0, 'ko': 3.0, 'ja': 3.0} (any number of languages, named)."""
    if "=" in str(ratio):
        names, _, numbers = str(ratio).partition("=")
        langs = [normalize_language(name.strip(), "data_mix.ratio") for name in names.split(":")]
        values = _numbers(numbers)
        if len(values) != len(langs) or len(set(langs)) != len(langs):
            raise ConfigError(
                f"data_mix.ratio={ratio!r} names the languages {langs} but gives {len(values) or 'no valid'} "
                "non-negative numbers; write one number per language, each language once, e.g. 'en:ko:ja=10:3:3'."
            )
        return dict(zip(langs, values, strict=True))
    order = ["en", "ko"] if set(languages) <= {"en", "ko"} else languages
    values = _numbers(str(ratio).replace("-", ":"))
    if len(values) != len(order):
        hint = " (an unquoted 10:3 in YAML is the base-60 number 603: quote it)" if ":" not in str(ratio) else ""
        more = ", or name the languages: 'en:ko:ja=10:3:3'" if len(order) > 2 else ""
        raise ConfigError(
            f"data_mix.ratio={ratio!r} is not of the form 'en:ko' such as '10:3' (non-negative numbers, "
            f"languages in that order: {order}){hint}{more}."
        )
    return dict(zip(order, values, strict=True))


# Splits that only ever evaluate: training loads drop rows duplicating their questions (see medtune/data/leakage.py)
DEFAULT_EVAL_SPLITS = (
    "kormedmcqa:test",
    "kormed_law:test",
    "medqa_4opt:test",
    "medqa_5opt:test",
    "mmlu:test",
    "pubmedqa:test",
    "kmmlu_criminal_law:test",
    "sample_ko:test",
    "sample_en:test",
)


@dataclass
class DataConfig:
    """Where the raw and prepared data live, and how records become prompts and labels."""

    data_dir: str = "${oc.env:MEDTUNE_DATA_DIR,data}"
    cache_dir: str = f"{CACHE_ROOT}/data"
    on_bad_row: str = "error"  # error | skip (skipped rows are counted in the prepare report)
    loss_on: str = "answer"  # answer (prompt masked with -100) | all
    answer_format: str = "letter_text"  # letter | letter_text: what an MCQ's training target looks like
    exclude_eval_overlap: bool = True  # drop training rows whose question duplicates an eval question
    hub: bool = False  # load sources that have a hub copy by their hub id (datasets.load_dataset) instead of data_dir
    eval_splits: list[str] = field(default_factory=lambda: list(DEFAULT_EVAL_SPLITS))  # "<source>:<split>"
    exclude_law_from_train: bool = True  # keep every KorMedMCQA law row (block and regex) out of training loads
    near_dup_threshold: float = 0.9  # character 5-gram Jaccard at or above which a question is a near duplicate
    # your own datasets by name, used like built-in sources ("<name>:<split>" in data_mix.sources, <name> in
    # eval.tasks when it is multiple choice): see medtune/config/datasets.py and README, "Your own data"
    datasets: dict[str, Any] = field(default_factory=dict)  # name -> DatasetConfig (plain mappings in YAML)
    # prompt cue words per language, added to (or replacing) the built-in Korean and English ones, e.g.
    # {ja: {question: 質問, answer: 答え}}; keys in PROMPT_WORD_KEYS. A language without any uses the English ones.
    prompt_words: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("data.on_bad_row", self.on_bad_row, ("error", "skip"))
        self.datasets = check_datasets(dict(self.datasets))
        self.prompt_words = _checked_words(self.prompt_words)
        check_choice("data.loss_on", self.loss_on, ("answer", "all"))
        check_choice("data.answer_format", self.answer_format, ("letter", "letter_text"))
        if not 0.5 <= self.near_dup_threshold <= 1.0:
            raise ConfigError(f"data.near_dup_threshold={self.near_dup_threshold} must be in [0.5, 1].")
        bad = [s for s in self.eval_splits if s.count(":") != 1]
        if bad:
            raise ConfigError(f"data.eval_splits has {bad}; write each as '<source>:<split>', e.g. 'mmlu:test'.")


# what a language's prompt words say: the question's label, the cue after an MCQ's options and after an open question,
# the instruction of a chat-template MCQ, and the speakers of a chat rendered without a chat template
PROMPT_WORD_KEYS = ("question", "answer", "open_answer", "instruction", "user", "assistant")


def _checked_words(table: dict) -> dict[str, dict[str, str]]:
    out = {}
    for lang, words in _by_language(dict(table), "data.prompt_words").items():
        unknown = sorted(set(words) - set(PROMPT_WORD_KEYS))
        if unknown:
            raise ConfigError(f"data.prompt_words.{lang} has {unknown}; the words are {list(PROMPT_WORD_KEYS)}.")
        empty = [k for k, v in words.items() if not str(v or "").strip()]
        if empty:
            raise ConfigError(f"data.prompt_words.{lang}.{empty[0]} is empty; give the word or leave the key out.")
        out[lang] = {k: str(v).strip() for k, v in words.items()}
    return out
