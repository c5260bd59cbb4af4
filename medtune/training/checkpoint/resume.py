"""Every resume rule: which checkpoint a run continues from, and whether it is the run it claims to be.

    check_target(cfg.trainer.resume)              # the command, before torch: the target exists
    plan = plan_resume(cfg, run_dir, world_size)  # None: start at step 0; ResumeMismatch (exit 2) on a mismatch
    record = checkpoint_record(run_identity(cfg, world_size), plan)  # stored in every checkpoint of the run
    summary |= check_before_load(plan.checkpoint, run_dir, data.fingerprint, cfg, plan, record)  # then load it

`trainer.resume`: never; auto (this run directory's newest complete checkpoint); a checkpoint or run directory (its
newest). It is resolved once, at the start: the run loads that checkpoint, not one written since.
Every checkpoint's state.json holds `run_config` (the validated config as dotted keys, plus `sharding.world_size`:
another number of ranks is a change like any other) and `resumes` (the changes accepted at the earlier resumes of its
lineage). On resume a key may differ only when
- it is operational (FREE): checkpoint and log cadence, progress bar, logger, the evaluation after training,
  timeouts, cache paths; or
- it is named, or its group is, in `trainer.resume_allow`, and it is not LOCKED.
Either way the change is recorded: summary.json `run/resume_changes`, and the next checkpoints carry it on.
LOCKED keys come back from the checkpoint, so a new value would be written down and never used: refused always.
`trainer.max_steps` is free only when the steps already trained had the same learning rate under the new value
(a constant schedule with a fixed warmup); with a decaying schedule it needs `trainer.resume_allow=[trainer.max_steps]`
(the rest of the run then follows the new curve from the checkpoint's step: the lr jumps there).
The data is compared too, once it is loaded (`check_data`): state.json's `data` holds a hash of every training
source's rows (`data.content.<source:split>`) and of the mix's selected ids (`data.selected`); a source whose rows
changed is refused in one line naming it unless `trainer.resume_allow` names `data` (or that key), and recorded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

from medtune.config import ConfigError, OptimConfig, TrainConfig
from medtune.training.checkpoint.layout import STATE_FILE, list_checkpoints, read_state
from medtune.training.errors import TrainingError
from medtune.training.schedule import lr_factor

log = logging.getLogger(__name__)

FREE = (
    "trainer.save_every",
    "trainer.log_every",
    "trainer.eval_every",
    "trainer.eval_batches",
    "trainer.keep_checkpoints",
    "trainer.progress_bar",
    "trainer.merge_adapter",
    "trainer.grad_ckpt_every",  # recomputes activations; the same gradients
    "trainer.grad_ckpt_layers",  # the same, counted in layers (the memory plan's choice)
    "trainer.memory_budget_gib",  # what the plan may use: rows are compared on their own, recomputation is free
    "trainer.offload_activations",  # where the saved tensors wait for backward; the same gradients
    "trainer.grad_ckpt_style",  # how it recomputes them
    "trainer.loss_chunk_size",  # chunks of the same cross-entropy
    "trainer.loss_kernel",  # the same cross-entropy, computed by torch's ops or one Triton kernel
    "sharding.timeout_min",
    "sharding.backend",
    "model.cache_dir",
    "data.cache_dir",
    "logger",
    "eval",  # scores the trained adapter; does not change it (the watch included)
    "trainer.guard",  # may end the run earlier, never changes a step's weights
    "trainer.keep",  # which watched step's adapter is saved
    "trainer.keep_by",
    "stage",
    "run_name",
)
LOCKED = {
    "optim": "the checkpoint restores the optimizer with its lr, betas, eps and weight decay",
    "seed": "the checkpoint restores every RNG, and the seed drew a random-init base model's weights",
}
DATA_KEYS = ("data.content", "data.selected")  # the data fingerprint's names (training.batches.data_fingerprint)
NOT_COMPARED = ("trainer.resume", "trainer.resume_allow")  # how this invocation resumes, not what the run is
ABSENT = "<absent>"
# Keys added after checkpoints existed, and what a checkpoint without them was trained with: a resume with that
# value is no change; another value is compared as any change is (lora.fused_base now defaults to on: a change).
ADDED_LATER = {
    "trainer.rms_norm": "kernels",
    "lora.fused_base": False,
    "lora.fused": False,
    "trainer.kernels": "none",
    "trainer.compile": False,
}


class ResumeMismatch(ConfigError):
    """The checkpoint was trained with another config than the one given now."""


@dataclasses.dataclass
class ResumePlan:
    """Where training continues from, and which config changes were accepted there."""

    checkpoint: Path
    step: int
    changes: dict[str, list[Any]]  # key -> [checkpoint value, value now]
    history: list[dict[str, Any]]  # changes accepted at earlier resumes of the checkpoint's lineage
    verified: bool = True  # False: an old checkpoint without its config; nothing could be compared

    def lineage(self) -> list[dict[str, Any]]:
        """Every accepted change of this run so far, with the step it took effect at."""
        return self.history + ([{"step": self.step, "changes": self.changes}] if self.changes else [])

    def summary(self) -> dict[str, Any]:
        """The run/* keys summary.json gets (scalars: the changes as one JSON string)."""
        out: dict[str, Any] = {"run/resumed_from": str(self.checkpoint), "run/resumed_at_step": self.step}
        if not self.verified:
            out["run/resume_verified"] = False
        if self.lineage():
            out["run/resume_changes"] = json.dumps(self.lineage(), sort_keys=True)
        return out


def check_target(resume: str) -> None:
    """`trainer.resume` is never, auto, or an existing checkpoint or run directory (no torch: the command's check)."""
    if resume in ("never", "auto"):
        return
    if not Path(resume).expanduser().is_dir():
        raise ConfigError(
            f"trainer.resume={resume!r} is neither 'never', 'auto' nor an existing checkpoint or run directory; "
            "use trainer.resume=auto with hydra.run.dir=<the run's directory>, or the path of a checkpoint."
        )


def find_resume_point(resume: str, run_dir: Path) -> Path | None:
    """Resolve trainer.resume: never -> None; auto -> newest in this run; a path -> that checkpoint or its run's
    newest. A path without a complete checkpoint is a ConfigError."""
    if resume == "never":
        return None
    if resume == "auto":
        found = list_checkpoints(run_dir / "checkpoints")
        return found[-1] if found else None
    path = Path(resume).expanduser()
    if (path / STATE_FILE).is_file():
        return path
    found = list_checkpoints(path / "checkpoints") or list_checkpoints(path)
    if not found:
        raise ConfigError(
            f"trainer.resume={resume}: no complete checkpoint there (looked for {path}/state.json and "
            f"{path}/checkpoints/step_*); use trainer.resume=auto with hydra.run.dir=<the run's directory>."
        )
    return found[-1]


def run_identity(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """The validated config as dotted keys (the form state.json stores), plus the number of ranks."""
    flat = _flatten(dataclasses.asdict(cfg))
    flat["sharding.world_size"] = world_size
    return json.loads(json.dumps(flat))  # tuples become lists, as they come back from state.json


def checkpoint_record(identity: dict[str, Any], plan: ResumePlan | None) -> dict[str, Any]:
    """What every checkpoint of this run stores beside the loop state."""
    return {"run_config": identity, "resumes": plan.lineage() if plan else []}


def plan_resume(cfg: TrainConfig, run_dir: Path, world_size: int) -> ResumePlan | None:
    """Resolve trainer.resume and check the checkpoint against `cfg`; raises ConfigError before anything loads."""
    point = find_resume_point(cfg.trainer.resume, run_dir)
    if point is None:
        return None
    state = read_state(point)
    step = int(state["step"])
    if cfg.trainer.max_steps < step:
        raise ConfigError(
            f"trainer.max_steps={cfg.trainer.max_steps} is below the step of the checkpoint to resume ({point}, "
            f"step {step}); set trainer.max_steps >= {step}, or resume from an earlier checkpoint."
        )
    if "run_config" not in state:
        log.warning("%s predates checkpoints that record their config: resuming without comparing configs", point)
        return ResumePlan(point, step, {}, [], verified=False)
    current = run_identity(cfg, world_size)
    names = [*current, *DATA_KEYS]
    unknown = [a for a in cfg.trainer.resume_allow if not any(k == a or k.startswith(f"{a}.") for k in names)]
    if unknown:
        raise ConfigError(
            f"trainer.resume_allow names {unknown}, which are not config keys; name a key or a group, e.g. "
            "trainer.resume_allow=[trainer.max_steps,data_mix]."
        )
    changes, refused = compare(state["run_config"], current, cfg, step)
    if refused:
        raise ResumeMismatch(_mismatch_message(cfg.trainer.resume, point, step, changes, refused))
    if changes:
        log.warning("resuming %s with changes, recorded as run/resume_changes: %s", point, _show_changes(changes))
    return ResumePlan(point, step, changes, list(state.get("resumes", [])))


def check_before_load(
    point: Path,
    run_dir: Path,
    fingerprint: dict[str, str],
    cfg: TrainConfig,
    plan: ResumePlan | None,
    record: dict[str, Any],
) -> dict[str, Any]:
    """The planned checkpoint is still there, and check_data of the data loaded now (its `fingerprint`) against it;
    an accepted change joins `plan` and `record` (what the next checkpoints store). Returns the summary's run/* keys
    when the data changed, else {}."""
    if not (point / STATE_FILE).is_file():  # not looked up again: a checkpoint written since was not checked
        raise TrainingError(
            f"{point} was checked at the start of this run and is gone now (is another job writing "
            f"{run_dir}, or did its keep_checkpoints remove it?); nothing was loaded. Run again: the "
            "check picks the newest complete checkpoint."
        )
    saved = read_state(point)
    plan = plan or ResumePlan(point, int(saved["step"]), {}, list(saved.get("resumes", [])))
    if not check_data(saved.get("data"), fingerprint, cfg, plan):
        return {}
    record["resumes"] = plan.lineage()
    return plan.summary()


def check_data(
    saved: dict[str, str] | None, current: dict[str, str], cfg: TrainConfig, plan: ResumePlan
) -> dict[str, list[Any]]:
    """Compare the checkpoint's data fingerprint with the data loaded now; raises ResumeMismatch (one line) on a
    change not allowed, else adds the changes to `plan` (recorded as run/resume_changes) and returns them."""
    if saved is None:
        log.warning("%s predates checkpoints that record their data: resuming without comparing it", plan.checkpoint)
        return {}
    changes = {k: [saved.get(k, ABSENT), current.get(k, ABSENT)] for k in sorted(set(saved) | set(current))}
    changes = {k: v for k, v in changes.items() if v[0] != v[1]}
    allow = tuple(cfg.trainer.resume_allow)
    # the selection follows from an accepted change of the mix's config or of a source's rows
    refused = [k for k in changes if not _matching(k, allow)]
    accepted = [k for k in [*plan.changes, *changes] if k not in refused and not _matching(k, FREE)]
    if any(_matching(k, ("data_mix", "data")) for k in accepted) and "data.selected" in refused:
        refused.remove("data.selected")  # the selection follows from the accepted change of the mix or of its rows
    if refused:
        sources = [k.removeprefix("data.content.") for k in refused if k != "data.selected"]
        what = ", ".join(sources) + (" (rows changed)" if sources else "")
        if "data.selected" in refused:
            what += ("; " if sources else "") + "the mix selected other rows"
        raise ResumeMismatch(
            f"trainer.resume={cfg.trainer.resume}: the training data changed since {plan.checkpoint} (step "
            f"{plan.step}) was saved: {what}; nothing was loaded. Restore the data to continue the run as it was, "
            "add trainer.resume_allow=[data] to continue on the new data (recorded in summary.json "
            "run/resume_changes), or start a new run."
        )
    if changes:
        plan.changes.update(changes)
        log.warning("resuming %s on changed data, recorded as run/resume_changes: %s", plan.checkpoint, sorted(changes))
    return changes


def compare(
    saved: dict[str, Any], current: dict[str, Any], cfg: TrainConfig, step: int
) -> tuple[dict[str, list[Any]], dict[str, str]]:
    """(every differing key -> [checkpoint value, value now], the refused ones -> why)."""
    changes: dict[str, list[Any]] = {}
    refused: dict[str, str] = {}
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, ADDED_LATER.get(key, ABSENT)), current.get(key, ABSENT)
        if key in NOT_COMPARED or old == new:
            continue
        changes[key] = [old, new]
        why = _refusal(key, old, new, cfg, step)
        if why:
            refused[key] = why
    return changes, refused


def _refusal(key: str, old: Any, new: Any, cfg: TrainConfig, step: int) -> str | None:
    """Why `key` may not change on this resume, or None when it may."""
    locked = _matching(key, tuple(LOCKED))
    if locked:
        return f"{LOCKED[locked]}: it cannot change on resume"
    if _matching(key, FREE):
        return None
    if key == "trainer.max_steps" and _same_lr_so_far(cfg.optim, int(old), int(new), step):
        return None
    if _matching(key, tuple(cfg.trainer.resume_allow)):
        return None
    if key == "trainer.max_steps":
        return f"the {cfg.optim.schedule} schedule over {new} steps gives steps 1-{step} another lr than they had"
    return "defines the run"


def _same_lr_so_far(optim: OptimConfig, old_steps: int, new_steps: int, step: int) -> bool:
    """True when steps 0..step-1 get the same lr in a run of old_steps and in one of new_steps."""
    return all(
        math.isclose(lr_factor(optim, old_steps, s), lr_factor(optim, new_steps, s), rel_tol=1e-12) for s in range(step)
    )


def _matching(key: str, patterns: tuple[str, ...]) -> str | None:
    """The pattern that names `key` itself or a group above it."""
    return next((p for p in patterns if key == p or key.startswith(p + ".")), None)


def _mismatch_message(
    resume: str, point: Path, step: int, changes: dict[str, list[Any]], refused: dict[str, str]
) -> str:
    lines = [f"trainer.resume={resume}: {point} (step {step}) was trained with another config; nothing was loaded."]
    for key, (old, new) in changes.items():
        why = refused.get(key, "may change: it would be recorded")
        lines.append(f"  {key}: checkpoint {_show(old)}, now {_show(new)} ({why})")
    allowable = sorted({_option(k) for k in refused if not _matching(k, tuple(LOCKED))})
    lines.append("To continue the run as it was, drop those overrides.")
    if allowable:
        lines.append(
            f"To accept the change and have it recorded (summary.json run/resume_changes), add "
            f"trainer.resume_allow=[{','.join(allowable)}]."
        )
    lines.append("To train with the new config, start a new run (without trainer.resume, or in another hydra.run.dir).")
    return "\n".join(lines)


def _option(key: str) -> str:
    """`data_mix.weights.en` -> `data_mix.weights`: the config option a nested key belongs to."""
    return ".".join(key.split(".")[:2])


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _show_changes(changes: dict[str, list[Any]]) -> str:
    return ", ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in changes.items())


def _flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
