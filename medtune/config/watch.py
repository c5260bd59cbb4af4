"""Config of the watch during training (`eval.watch`, in EvalConfig), the guard and the kept step (`trainer.guard`,
`trainer.keep`): the schema of the guard and the checks that tie the three together.

    eval.watch=[kormed_law,sample_ko] eval.watch_limit=64 eval.watch_every=10
    trainer.guard.protect=[kormed_law,lang:ko] trainer.guard.margin=0.05 trainer.guard.action=stop
    trainer.keep=best trainer.keep_by=worst_lang

A protected or criterion group is a watch set's name or `lang:<language>` (the pool of that language's medical
sets); the languages of the sets are checked before the model loads (runtime/preflight.py), not here, since the
task registry lives in medtune.eval.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medtune.config.checks import ConfigError, check_choice, check_positive

WORST_LANG = "worst_lang"  # keep_by: the lowest change from base over the watched languages


@dataclass
class GuardConfig:
    """Stop (or mark) a run when a protected watch group falls below the base by more than `margin`."""

    protect: list[str] = field(default_factory=list)  # watch set names and/or lang:<language>; empty: no guard
    # in the unit of `metric`: nats of mean gold-letter log-likelihood (gold_ll) or percentage points (acc)
    margin: float = 0.05
    level: float = 0.95  # of the paired bootstrap interval whose upper end must lie below -margin
    action: str = "stop"  # stop: end training at that step (adapter saved, eval stage runs) | mark: record only
    metric: str = "gold_ll"  # gold_ll | acc (needs eval.watch_accuracy)
    patience: int = 1  # consecutive watched steps that must fall below before it acts

    def __post_init__(self) -> None:
        check_choice("trainer.guard.action", self.action, ("stop", "mark"))
        check_choice("trainer.guard.metric", self.metric, ("gold_ll", "acc"))
        check_positive("trainer.guard.patience", self.patience)
        if not self.margin >= 0:
            raise ConfigError(f"trainer.guard.margin={self.margin} must be >= 0 (in the unit of guard.metric).")
        if not 0.5 < self.level < 1.0:
            raise ConfigError(f"trainer.guard.level={self.level} must be in (0.5, 1).")


def check_watch_config(eval_cfg: Any, trainer_cfg: Any) -> None:
    """The watch, the guard and `keep` agree with each other; ConfigError names the key and the fix."""
    watching = bool(eval_cfg.watch) and eval_cfg.watch_every > 0
    if eval_cfg.watch_every < 0:
        raise ConfigError(f"eval.watch_every={eval_cfg.watch_every} must be >= 0 (0: no watch).")
    if eval_cfg.watch_every > 0 and not eval_cfg.watch:
        raise ConfigError("eval.watch_every > 0 but eval.watch names no set; add e.g. eval.watch=[sample_ko].")
    check_positive("eval.watch_limit", eval_cfg.watch_limit, allow_none=True)
    for name, n in eval_cfg.watch_limits.items():
        if name not in eval_cfg.watch:
            raise ConfigError(f"eval.watch_limits.{name}: {name!r} is not in eval.watch {list(eval_cfg.watch)}.")
        check_positive(f"eval.watch_limits.{name}", n)
    check_positive("eval.watch_batch_size", eval_cfg.watch_batch_size, allow_none=True)
    check_positive("eval.watch_batch_tokens", eval_cfg.watch_batch_tokens)
    guard = trainer_cfg.guard
    check_choice("trainer.keep", trainer_cfg.keep, ("last", "best"))
    asked = [("trainer.guard.protect", p) for p in guard.protect]
    if trainer_cfg.keep == "best":
        asked.append(("trainer.keep_by", trainer_cfg.keep_by))
    if asked and not watching:
        what = "trainer.guard.protect" if guard.protect else "trainer.keep=best"
        raise ConfigError(f"{what} acts on the watch, which is off; set eval.watch (its sets) and eval.watch_every.")
    for key, group in asked:
        if group == WORST_LANG and key == "trainer.keep_by":
            continue
        if not (group.startswith("lang:") and len(group) > 5) and group not in eval_cfg.watch:
            raise ConfigError(
                f"{key} names {group!r}, which is neither a watch set ({list(eval_cfg.watch)}) nor lang:<language>"
                + (f" nor {WORST_LANG}" if key == "trainer.keep_by" else "")
                + "."
            )
    if guard.protect and guard.metric == "acc" and not eval_cfg.watch_accuracy:
        raise ConfigError("trainer.guard.metric=acc needs eval.watch_accuracy=true (the watch then scores accuracy).")
