"""The watch inside the training loop: change from base at the watched steps, the guard, and the step kept.

    watch = Watch.build(cfg, tokenizer, on_forward=watchdog.tick)   # None when eval.watch is off
    watch.begin(model)                             # the base model's scores on the watch sets (cached), once
    if watch.due(step):
        tracker.log(watch.observe(model, step), step=step)   # watch/<set>/..., watch/lang/<lang>/..., guard/...
    if watch.stop: ...                             # trainer.guard.action=stop fired: end training here
    summary |= watch.finish(model, step, loop_s)   # keep=best: the best step's adapter weights are put back

Every rank calls every method (scores are spread over the ranks and gathered; under FSDP the forwards run in
lockstep); all ranks hold the same gathered scores and run the same seeded bootstrap, so every rank reaches the
same guard decision without a collective (none sits behind a data-dependent branch).

The guard fires when, for `patience` watched steps in a row, a protected group's paired bootstrap interval (at
guard.level, over its questions) lies wholly below -margin: the drop from base is larger than the margin at that
level (a one-sided test at (1 - level) / 2). Repeating the test at every watched step raises the chance of a false
alarm over a run; `patience` > 1 and a wider level trade it against a later stop.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from medtune.config import TrainConfig
from medtune.eval.ranks import Ranks
from medtune.eval.stats import format_level
from medtune.eval.watch import Scores, WatchSet, base_watch_scores, build_watch_sets, score_watch
from medtune.eval.watch_stats import criterion, group_change, group_key, watch_metrics
from medtune.runtime.shards import is_fsdp, scoring_view

log = logging.getLogger("medtune.train")


class Watch:
    """Watch sets and base scores of one run, the guard's state and the best step's adapter weights."""

    def __init__(self, cfg: TrainConfig, sets: list[WatchSet], tokenizer: Any, on_forward: Any = None) -> None:
        self.cfg, self.sets, self.tokenizer, self.on_forward = cfg, sets, tokenizer, on_forward
        self.ranks: Ranks | None = None
        self.base: Scores = {}
        self.seconds = 0.0  # spent watching in this invocation, base scores included: the overhead
        self.base_s = 0.0  # of which the base model's scores (about nothing when cached)
        self.streak = 0  # consecutive watched steps with a protected group below the margin
        self.fired: dict[str, Any] | None = None
        self.best: dict[str, Any] | None = None  # keep=best: step and value of the best watched step
        self.last: dict[str, Any] | None = None
        self.weights: dict[str, torch.Tensor] | None = None  # this rank's shard of the best step's adapter
        self.since_step = 0  # keep=best chooses among the steps watched since (a resume loses earlier weights)

    @classmethod
    def build(cls, cfg: TrainConfig, tokenizer: Any, on_forward: Any = None) -> Watch | None:
        """The run's watch, or None when eval.watch is off."""
        ec = cfg.eval
        if not ec.watch or ec.watch_every <= 0:
            return None
        max_length = ec.max_length or cfg.packing.max_seq_len or 2048
        sets = build_watch_sets(ec.watch, ec.watch_limit, ec.watch_limits, cfg.data, tokenizer, ec.seed, max_length)
        log.info("watch: %s every %d steps", ", ".join(f"{s.name} ({len(s.ids)})" for s in sets), ec.watch_every)
        return cls(cfg, sets, tokenizer, on_forward)

    @property
    def stop(self) -> bool:
        """True once the guard fired with action=stop."""
        return self.fired is not None and self.fired["action"] == "stop"

    def due(self, step: int) -> bool:
        """Watched steps: every eval.watch_every, and the last."""
        return step % self.cfg.eval.watch_every == 0 or step == self.cfg.trainer.max_steps

    def begin(self, model: torch.nn.Module) -> None:
        """Score the base model (adapter off) on the watch sets, or read its cached scores."""
        started = time.perf_counter()
        self.ranks = Ranks.current(lockstep=is_fsdp(model), on_forward=self.on_forward)
        with scoring_view(model) as plain:
            self.base = base_watch_scores(plain, self.tokenizer, self.sets, self.cfg.eval, self.ranks)
        self.base_s = time.perf_counter() - started
        self.seconds += self.base_s

    def observe(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        """Score the adapter at `step`; the change from base per set and language, the guard, the kept step."""
        started = time.perf_counter()
        ec = self.cfg.eval
        with scoring_view(model) as plain:
            run = score_watch(plain, self.sets, ec.watch_batch_size, self.ranks, ec.watch_batch_tokens)
        stats = (ec.confidence, ec.bootstrap_samples, ec.seed)
        metrics = watch_metrics(self.sets, self.base, run, *stats, accuracy=ec.watch_accuracy)
        metrics |= self._guard(step, run)
        if self.cfg.trainer.keep == "best":
            metrics |= self._keep(step, criterion(metrics, self.cfg.trainer.keep_by), model)
        seconds = time.perf_counter() - started
        self.seconds += seconds
        return metrics | {"watch/step": step, "watch/seconds": seconds}

    def _guard(self, step: int, run: Scores) -> dict[str, float]:
        """Test every protected group; fire (once) after `patience` watched steps in a row below the margin."""
        gc, ec = self.cfg.trainer.guard, self.cfg.eval
        if not gc.protect:
            return {}
        tests = {g: group_change(self.sets, self.base, run, g, gc.metric, gc.level, ec.bootstrap_samples, ec.seed)
                 for g in gc.protect}  # fmt: skip
        below = sorted((t["ci_high"], g) for g, t in tests.items() if t["ci_high"] < -gc.margin)
        self.streak = self.streak + 1 if below else 0
        out = {f"guard/{group_key(g)}/ci_high": t["ci_high"] for g, t in tests.items()}
        out["guard/below"] = float(bool(below))
        if below and self.streak >= gc.patience and self.fired is None:
            group = below[0][1]  # the farthest below
            fired = {"step": step, "group": group, **tests[group], "metric": gc.metric, "margin": gc.margin}
            self.fired = fired | {"level": gc.level, "action": gc.action}
            log.warning("guard fired at step %d: %s", step, describe_guard(self.fired))
            out["guard/fired_step"] = float(step)
        return out

    def _keep(self, step: int, value: float, model: torch.nn.Module) -> dict[str, float]:
        """Remember this step's adapter weights when it is the best watched step so far (the first of equals)."""
        self.last = {"step": step, "value": value}
        if self.best is None or value > self.best["value"]:
            self.best = dict(self.last)
            self.weights = _snapshot(model)
        return {"keep/best_step": float(self.best["step"]), "keep/criterion": value}

    def finish(self, model: torch.nn.Module, step: int, loop_s: float) -> dict[str, Any]:
        """Summary keys of the watch, the guard and keep; keep=best puts the best step's weights back in `model`."""
        overhead = self.seconds / max(loop_s - self.seconds, 1e-9)  # watch time over the rest of the loop's time
        out: dict[str, Any] = {
            "watch/total_s": self.seconds,
            "watch/base_s": self.base_s,
            "watch/overhead_frac": overhead,
        }
        if self.cfg.trainer.guard.protect:
            out |= guard_summary(self.fired)
        if self.cfg.trainer.keep == "best" and self.best is not None:
            if self.best["step"] != step:
                _restore(model, self.weights)
                log.info("keep=best: adapter of step %d (%s %+.4f) kept, not step %d", self.best["step"],
                         self.cfg.trainer.keep_by, self.best["value"], step)  # fmt: skip
            out |= {"keep/step": self.best["step"], "keep/by": self.cfg.trainer.keep_by}
            out |= {"keep/value": self.best["value"], "keep/since_step": self.since_step}
            out |= {"keep/last_step": self.last["step"], "keep/last_value": self.last["value"]}
        return out

    def state(self) -> dict[str, Any]:
        """What a checkpoint stores to continue the watch (the best step's weights are not stored)."""
        return {"streak": self.streak, "fired": self.fired, "best": self.best}

    def load_state(self, state: dict[str, Any], step: int) -> None:
        """Continue from a checkpoint at `step`; keep=best then chooses among the steps watched from here on."""
        self.streak, self.fired = state["streak"], state["fired"]  # the time counts this invocation's loop only
        if state.get("best") is not None and self.cfg.trainer.keep == "best":
            log.warning(
                "keep=best after a resume: the weights of step %d (best so far) were not checkpointed; the kept "
                "adapter is the best of the steps watched after step %d",
                state["best"]["step"],
                step,
            )
        self.since_step, self.best = step, None


def guard_summary(fired: dict[str, Any] | None) -> dict[str, Any]:
    """guard/... summary keys: whether and where it fired, the values and the test."""
    if fired is None:
        return {"guard/fired": 0}
    keys = ("step", "group", "metric", "delta", "ci_low", "ci_high", "run", "base", "n", "margin", "level", "action")
    return {"guard/fired": 1, **{f"guard/{k}": fired[k] for k in keys}, "guard/test": describe_guard(fired)}


def describe_guard(fired: dict[str, Any]) -> str:
    """One line: the group, its change from base with the interval, and the test it failed."""
    unit = "nats" if fired["metric"] == "gold_ll" else "pp"
    return (
        f"{fired['group']} {fired['metric']} change from base {fired['delta']:+.4f} {unit} "
        f"[{fired['ci_low']:+.4f}, {fired['ci_high']:+.4f}] ({format_level(fired['level'])} paired bootstrap over "
        f"{int(fired['n'])} questions): upper end below -{fired['margin']:g} {unit}; action {fired['action']}"
    )


def _local(param: torch.Tensor) -> torch.Tensor:
    """This rank's part of a parameter: the local shard of an FSDP2 DTensor (its storage, under no_grad)."""
    return param.to_local() if hasattr(param, "to_local") else param


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {n: _local(p).detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def _restore(model: torch.nn.Module, weights: dict[str, torch.Tensor] | None) -> None:
    if weights is None:
        raise RuntimeError("keep=best: the best step's weights were not kept")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                _local(param).copy_(weights[name])
