"""Config schemas of the data side: data_mix, data, eval and logger (see medtune/config/training.py for the rest)."""

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
CLUSTER_KEYS = ("subject", "task", "language", "domain", "exam")  # eval.cluster_by: what a cluster shares
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


@dataclass
class EvalConfig:
    """Post-training evaluation through lm-eval on locally prepared tasks."""

    enabled: bool = True
    tasks: list[str] = field(default_factory=lambda: ["kormed_law", "medqa_4opt"])
    limit: int | None = None  # questions per task; None = all
    task_limits: dict[str, int] = field(default_factory=dict)  # per-task override of limit, e.g. {mmlu_general: 2000}
    num_fewshot: int = 0
    scoring: str = "letter"  # letter | cloze
    batch_size: int = 8
    # continuation: project only the answer positions onto the vocabulary (evaluation fits in training memory);
    # hflm: lm-eval's own HFLM, which takes the log-softmax of every position (batch x length x vocabulary)
    scorer: str = "continuation"
    compare_base: bool = True  # also score the base model (cached) and report forgetting
    bootstrap_samples: int = 2000
    # paired intervals resample whole clusters of questions that share a prediction-row key (subject, task,
    # language, domain) or an exam ("exam": the id's native part without its last "-<number>", e.g. KorMedMCQA's
    # doctor-2022-1); None: questions one by one
    cluster_by: str | None = None
    confidence: float = 0.95
    seed: int = 0  # also picks the `limit` subset, so runs with one seed are scored on the same questions
    adapter: str | None = None  # python -m medtune.evaluate: a saved peft adapter dir to load onto the model
    # the adapter's recorded base (base_identity.json: architecture, weights fingerprint) must be this model's;
    # true applies it to another base anyway (the export's --base-mismatch-ok)
    base_mismatch_ok: bool = False
    sanity: str = "error"  # error | warn | off: identical letter logits, one letter everywhere, below chance
    cache_base: bool = True  # reuse the base model's scores across a sweep (keyed on model, data, settings)
    cache_dir: str = f"{CACHE_ROOT}/eval_base"
    max_length: int | None = None  # lm-eval context length; None: from the model config
    # The watch during training (medtune/eval/watch.py): eval tasks scored every watch_every optimizer steps and at
    # the last, on a seeded subset (eval.seed) of watch_limit questions each (watch_limits: per set), by the gold
    # letter's log-probability, against the base model on the same questions (cached like the base scores).
    watch: list[str] = field(default_factory=list)  # [] or watch_every=0: no watch
    watch_every: int = 0
    watch_limit: int | None = 64  # None: every question of the set
    watch_limits: dict[str, int] = field(default_factory=dict)  # e.g. +eval.watch_limits.kormed_law=239
    watch_accuracy: bool = False  # also log letter accuracy and its change from base (the same forward)
    # All sets' questions share the forwards, longest first: each holds up to watch_batch_tokens prompt tokens
    # (padding included: rows x the longest) and, when set, at most watch_batch_size questions. 8192 is one micro-batch
    # of 4 x 2048 tokens; fewer, larger forwards keep a small model on a GPU from being launch-bound.
    watch_batch_size: int | None = None
    watch_batch_tokens: int = 8192

    def __post_init__(self) -> None:
        check_choice("eval.scoring", self.scoring, ("letter", "cloze"))
        check_choice("eval.scorer", self.scorer, ("continuation", "hflm"))
        check_choice("eval.sanity", self.sanity, ("error", "warn", "off"))
        check_positive("eval.batch_size", self.batch_size)
        check_positive("eval.bootstrap_samples", self.bootstrap_samples)
        if self.cluster_by is not None:
            check_choice("eval.cluster_by", self.cluster_by, CLUSTER_KEYS)
        if self.num_fewshot < 0:
            raise ConfigError(f"eval.num_fewshot={self.num_fewshot} must be >= 0.")
        check_positive("eval.limit", self.limit, allow_none=True)
        for name, n in self.task_limits.items():
            if name not in self.tasks:
                raise ConfigError(
                    f"eval.task_limits.{name}: {name!r} is not in eval.tasks {list(self.tasks)}; "
                    "remove the key or add the task."
                )
            check_positive(f"eval.task_limits.{name}", n)
        if not 0.5 < self.confidence < 1.0:
            raise ConfigError(f"eval.confidence={self.confidence} must be in (0.5, 1).")


@dataclass
class LoggerConfig:
    """Experiment tracking: W&B (offline unless asked), local csv/jsonl, or nothing."""

    backend: str = "wandb"  # wandb | csv | jsonl | none
    project: str = "medtune"
    entity: str | None = None
    mode: str = "offline"  # offline | online (online needs WANDB_API_KEY or a prior `wandb login`)
    group: str | None = None  # None: the Hydra sweep (`<date>_<time>`) in a multirun, no group otherwise
    tags: list[str] = field(default_factory=list)
    name: str | None = None  # W&B run name; None: the run directory's name
    job_type: str | None = None  # W&B job type, e.g. train | eval | report
    init_timeout_s: float = 30.0  # longest wait for W&B to start (and per request); then local files only
    finish_timeout_s: float = 30.0  # longest wait for the upload at the end of an online run

    def __post_init__(self) -> None:
        check_choice("logger.backend", self.backend, ("wandb", "csv", "jsonl", "none"))
        check_choice("logger.mode", self.mode, ("offline", "online"))
        check_positive("logger.init_timeout_s", self.init_timeout_s)
        check_positive("logger.finish_timeout_s", self.finish_timeout_s)
