"""The adapter-active check and a fingerprint of the base weights, both from the logits of one probe prompt.

A LoRA adapter that never trained (B = 0), or one that failed to attach, leaves the logits exactly as the base
model's: its "evaluation" would silently re-score the base. `check_adapter_active` compares the probe logits with
the adapter on and off and raises AdapterInactiveError when they do not differ. `load_adapter` first checks that the
model is the base the adapter records (medtune/models/identity.py) and raises BaseMismatchError when it is not.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from medtune.models.identity import architecture_of, identity_mismatch, read_identity

log = logging.getLogger(__name__)

PROBE_PROMPT = (
    "Question: Which organ produces insulin?\nA. Liver\nB. Pancreas\nC. Kidney\nD. Spleen\nAnswer:"
    "\n질문: 인슐린을 분비하는 기관은?\nA. 간\nB. 췌장\nC. 신장\nD. 비장\n정답:"
)
ACTIVE_TOL = 1e-6
OVERRIDE = "eval.base_mismatch_ok=true"  # how `python -m medtune.evaluate` applies an adapter to another base


class AdapterInactiveError(RuntimeError):
    """Loading the adapter did not change the model's output."""


class AdapterFileError(ValueError):
    """The adapter's files cannot be read or do not fit the model (truncated, garbage, another rank)."""


class BaseMismatchError(ValueError):
    """The adapter records another base (architecture or weights) than the model it is applied to."""


def is_peft_model(model: Any) -> bool:
    """True for a peft model (one with an adapter that can be switched off)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def probe_logits(model: Any, tokenizer: Any, prompt: str = PROBE_PROMPT) -> Any:
    """Float32 next-token logits at the last position of the probe prompt."""
    import torch

    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(input_ids=ids).logits[0, -1].float().cpu()
    finally:
        model.train(was_training)


def base_probe_logits(model: Any, tokenizer: Any) -> Any:
    """Probe logits of the base model: with the adapter disabled when there is one."""
    if is_peft_model(model):
        with model.disable_adapter():
            return probe_logits(model, tokenizer)
    return probe_logits(model, tokenizer)


def fingerprint(logits: Any) -> str:
    """A short hash of rounded logits: identifies the base weights in a cache key (random inits differ)."""
    rounded = (logits * 1000).round().to(dtype=logits.dtype).numpy().tobytes()
    return hashlib.sha256(rounded).hexdigest()[:16]


def check_adapter_active(model: Any, tokenizer: Any, on: Any = None) -> float:
    """Max |logit change| the adapter causes on the probe prompt; raises AdapterInactiveError when ~0. `on`: the
    adapter's probe logits when the caller already has them (probe_logits(model, tokenizer)), saving a forward."""
    if not is_peft_model(model):
        raise AdapterInactiveError("check_adapter_active needs a peft model; this model has no adapter.")
    bad = non_finite_lora(model)  # NaN weights make every logit NaN, which is no change by the test below
    if bad is not None:
        raise AdapterInactiveError(
            f"the adapter has NaN/inf weights ({bad}): the run diverged; use the adapter of an earlier checkpoint "
            "(the run's checkpoints/step_*), or train again with a lower optim.lr."
        )
    on = probe_logits(model, tokenizer) if on is None else on
    off = base_probe_logits(model, tokenizer)
    diff = float((on - off).abs().max())
    if not diff > ACTIVE_TOL:
        names = list(getattr(model, "peft_config", {}))
        raise AdapterInactiveError(
            f"the adapter {names} does not change the logits of the probe prompt (max |diff| = {diff:.2e}): it is "
            "untrained (LoRA B = 0), not attached to the layers the model uses, or disabled. Evaluating it would "
            "re-score the base model; check eval.adapter and that training updated the adapter weights."
        )
    log.info("adapter active: max |logit change| on the probe prompt = %.4f", diff)
    return diff


def non_finite_lora(model: Any) -> str | None:
    """'name: k of n values' for the first LoRA tensor holding NaN or inf, None when every one is finite."""
    for name, param in model.named_parameters():
        if "lora_" in name:
            finite = param.detach().isfinite()
            if not bool(finite.all()):
                return f"{name}: {int((~finite).sum())} of {finite.numel()} values"
    return None


def load_adapter(model: Any, path: str, base_mismatch_ok: bool = False, override: str = OVERRIDE) -> Any:
    """Attach a saved peft adapter (a directory with adapter_config.json) to a loaded base model, after checking
    that the model is the base the adapter records (BaseMismatchError naming `override` otherwise)."""
    from pathlib import Path

    from peft import PeftModel

    require_adapter_config(path)
    check_base(model, Path(path), base_mismatch_ok, override)
    from safetensors import SafetensorError

    try:
        return PeftModel.from_pretrained(model, path, is_trainable=False)
    except (SafetensorError, ValueError, RuntimeError, KeyError) as err:  # JSONDecodeError is a ValueError
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AdapterFileError(
            f"the adapter in {path} cannot be loaded onto this model ({type(err).__name__}: {reason[:300]}): its "
            "adapter_model.safetensors or adapter_config.json is damaged or was saved for another lora.r or "
            "target_modules; copy the adapter again from its run, or point at the run's own adapter directory."
        ) from err


def require_adapter_config(path: str) -> None:
    """FileNotFoundError naming eval.adapter when `path` holds no adapter_config.json (no saved adapter there)."""
    from pathlib import Path

    if not (Path(path) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"eval.adapter={path}: no adapter_config.json there; point it at a saved adapter dir.")


def check_base(model: Any, adapter_dir: Any, mismatch_ok: bool, override: str = OVERRIDE) -> None:
    """BaseMismatchError when the adapter's recorded base (base_identity.json) is not `model` (a build_model base)."""
    recorded = _recorded(adapter_dir)
    current = getattr(model, "medtune_base_identity", None)
    if recorded is None or current is None:
        log.warning(
            "%s records no base identity (saved before medtune recorded it): its base is not checked", adapter_dir
        )
        return
    _judge(identity_mismatch(recorded, current), adapter_dir, mismatch_ok, override)


def check_base_architecture(config: Any, adapter_dir: Any, mismatch_ok: bool, override: str = OVERRIDE) -> None:
    """check_base's architecture part, for a base whose weights are not filled yet (a meta model's `config`); the
    weights are checked by check_base once they are (which also warns under `mismatch_ok`: nothing to do here)."""
    recorded = None if mismatch_ok else _recorded(adapter_dir)
    if recorded is not None:
        current = {**recorded, "architecture": architecture_of(config)}  # weights and quantization: as recorded
        _judge(identity_mismatch(recorded, current), adapter_dir, mismatch_ok, override)


def _recorded(adapter_dir: Any) -> dict[str, Any] | None:
    try:
        return read_identity(adapter_dir)
    except ValueError as err:
        raise BaseMismatchError(str(err)) from err


def _judge(problem: str | None, adapter_dir: Any, mismatch_ok: bool, override: str) -> None:
    if problem is None:
        return
    if mismatch_ok:
        log.warning(
            "the adapter %s was trained on another base: %s; applied anyway (%s)", adapter_dir, problem, override
        )
        return
    raise BaseMismatchError(
        f"the adapter {adapter_dir} was trained on another base than this model: {problem}; load the base it was "
        f"trained on (the run's model and seed), or pass {override} to apply it anyway."
    )
