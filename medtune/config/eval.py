"""Config schema of the eval group: the final evaluation (lm-eval on locally prepared tasks), its statistics, and the
watch during training."""

from __future__ import annotations

from dataclasses import dataclass, field

from medtune.config.checks import CACHE_ROOT, ConfigError, check_choice, check_positive

CLUSTER_KEYS = ("subject", "task", "language", "domain", "exam")  # eval.cluster_by: what a cluster shares


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
