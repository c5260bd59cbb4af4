"""One export, end to end: resolve the run, check space, merge, write each format, check it, publish.

    written = export(ExportRequest(Path("runs/<run>"), formats=("gguf",), quant="q8_0"))

Each format goes into its own folder (default `<run dir>/export/<format>[-<quant>]`), built under a temporary name
and renamed into place only once its check passed; a failed check leaves it at `<folder>.check-failed` for
inspection and raises ExportCheckError. Bad input raises ExportInputError before anything heavy runs (the disk
space too, estimated from the architecture before the model is loaded).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtune.export import card, gate, writers
from medtune.export.check import TOLERANCES, Reference, against_evaluation, compare, reference
from medtune.export.gguf_loader import ExportLoadError
from medtune.export.gguf_tokenizer import TokenizerExportError
from medtune.export.gguf_writer import GGUFExportError, check_gguf_supported
from medtune.export.llamacpp import LlamaCppLM, binding
from medtune.export.merge import Merged, merge_adapter
from medtune.export.source import ExportInputError, ExportSource, resolve_source
from medtune.files.atomic import atomic_dir
from medtune.files.space import DISK_ERRNOS, StorageError, free_bytes, size_text, write_failure
from medtune.models.build import base_config

log = logging.getLogger(__name__)

FORMATS = ("safetensors", "gguf")
QUANTS = ("f16", "q8_0")
CHECK_FILE = "export_check.json"
PREDICTIONS = Path("eval") / "adapter" / "predictions.jsonl"  # the run's own per-question evaluation


class ExportCheckError(RuntimeError):
    """The export answers differently from the merged model; the message lists what differed."""


@dataclass
class Baseline:
    """The merged model's side of the check, computed once for every format: probes, log-probs and answers."""

    refs: list[Reference]
    probes: gate.GateProbes
    answers: list[dict[str, Any]]


@dataclass
class ExportRequest:
    """The command line, as arguments: what to export, in which formats, where."""

    path: Path
    formats: tuple[str, ...] = ("gguf",)
    quant: str = "f16"
    out: Path | None = None
    overwrite: bool = False
    base: str | None = None
    check: bool = True
    base_mismatch_ok: bool = False  # merge into a base other than the one the adapter records


def _validate(request: ExportRequest) -> None:
    unknown = [f for f in request.formats if f not in FORMATS]
    if unknown or not request.formats:
        raise ExportInputError(f"--format {','.join(request.formats)}: use one or more of {', '.join(FORMATS)}.")
    if request.quant not in QUANTS:
        raise ExportInputError(f"--quant {request.quant}: use one of {', '.join(QUANTS)} (GGUF weight types).")
    above = [request.out, *request.out.parents] if request.out else []
    blocking = next((p for p in above if p.is_file()), None)
    if blocking is not None:  # checked now, not after minutes of merging
        raise ExportInputError(f"--out {request.out}: {blocking} is a file, not a folder; pass --out DIR.")
    if request.quant != "f16" and "gguf" not in request.formats:
        raise ExportInputError(
            f"--quant {request.quant} applies to GGUF only; safetensors are written in the base's dtype. "
            "Drop --quant or add --format gguf."
        )


def targets(request: ExportRequest, source: ExportSource) -> dict[str, Path]:
    """The output folder of each requested format."""
    root = request.out or (source.run_dir or source.adapter_dir.parent) / "export"
    return {fmt: Path(root) / (f"gguf-{request.quant}" if fmt == "gguf" else fmt) for fmt in request.formats}


def _refuse_existing(paths: dict[str, Path], overwrite: bool) -> None:
    for path in paths.values():
        if path.exists() and any(path.iterdir()) and not overwrite:
            raise ExportInputError(f"{path} already exists; pass --overwrite to replace it, or --out DIR.")


def _check_space(source: ExportSource, request: ExportRequest, paths: dict[str, Path]) -> dict[str, int]:
    """Estimate every output's size from the architecture and refuse when the disk holds less (before writing)."""
    need = {fmt: writers.estimate_bytes(source.model_cfg, fmt, request.quant) for fmt in paths}
    root = next(iter(paths.values())).parent
    free = free_bytes(root)
    if free is not None and free < sum(need.values()):
        parts = " + ".join(f"{fmt} {size_text(n)}" for fmt, n in need.items())
        raise ExportInputError(
            f"not enough disk space in {root}: the export needs about {size_text(sum(need.values()))} ({parts}), "
            f"{size_text(free)} is free; free some space or pass --out DIR on a larger disk."
        )
    return need


def _write_and_check(
    merged: Merged, base: Baseline | None, source: ExportSource, request: ExportRequest, fmt: str, tmp: Path
) -> dict:
    """Write one format into tmp, load it back, compare it with the merged model; returns the check record."""
    started = time.perf_counter()
    written = writers.write(merged, source, fmt, request.quant, tmp)
    record: dict[str, Any] = {"format": fmt, "weight_type": written["weight_type"], **written["files"]}
    record["write_s"] = round(time.perf_counter() - started, 1)
    record["merge"] = {"adapter_logit_change": merged.adapter_logit_change, "logit_delta": merged.merge_logit_delta}
    record |= merged.seconds
    if base is not None:
        started = time.perf_counter()
        record |= _check(base, fmt, written["weight_type"], tmp)
        if source.run_dir and record.get("questions"):
            record["evaluated"] = against_evaluation(record["questions"], source.run_dir / PREDICTIONS)
        record["check_s"] = round(time.perf_counter() - started, 1)
    else:
        record |= {"passed": None, "failures": ["the check was skipped (--no-check)"]}
    (tmp / CHECK_FILE).write_text(json.dumps(record, indent=1, ensure_ascii=False))
    card.write_card(tmp, source, record)
    return record


def _probe_record(probes: gate.GateProbes) -> dict[str, Any]:
    counts = {lang: sum(len(t.docs) for t in probes.tasks if t.spec.language == lang) for lang in probes.languages}
    return {
        "origin": probes.origin, "languages": counts, "per_language_cap": probes.per_language,
        "tasks": [t.name for t in probes.tasks], "num_fewshot": probes.num_fewshot, "scoring": probes.scoring,
    }  # fmt: skip


def _llama_cpp(base: Baseline, folder: Path) -> dict[str, Any]:
    """The GGUF's answers in llama.cpp, judged like medtune's own reading; or why llama.cpp was not run."""
    why = binding()[2]
    if why:
        return {"run": False, "why": why}
    try:
        lm = LlamaCppLM(next(folder.glob("*.gguf")))
    except RuntimeError as err:  # e.g. a binding older than the architecture: no verdict from llama.cpp, said so
        return {"run": False, "why": str(err)}
    try:
        return {"run": True, **gate.judge(base.answers, gate.answers(lm, None, base.probes), base.probes.scoring)}
    finally:
        lm.close()


def _check(base: Baseline, fmt: str, weight_type: str, folder: Path) -> dict[str, Any]:
    """Load the export back; the verdict is its answers (and, for GGUF, llama.cpp's); log-probs are information.

    An export that does not load is a failed check too."""
    try:
        model, tokenizer = writers.load_back(fmt, folder)
    except ExportLoadError as err:
        return {"passed": False, "languages": {}, "failures": [str(err)], "questions": []}
    out = compare(base.refs, model, tokenizer, TOLERANCES[weight_type])
    out["logprobs_within_tolerance"], out["logprob_notes"] = out.pop("passed"), out.pop("failures")
    verdict = gate.judge(base.answers, gate.answers(model, tokenizer, base.probes), base.probes.scoring)
    out["gate"] = {"probes": _probe_record(base.probes), "medtune": verdict}
    failures = list(verdict["failures"])
    if fmt == "gguf":
        out["gate"]["llama_cpp"] = in_llama = _llama_cpp(base, folder)
        failures += [f"llama.cpp: {f}" for f in in_llama.get("failures", [])]
    return out | {"passed": not failures, "failures": failures}


def _disk_failure(err: BaseException, fmt: str, target: Path, need_bytes: int) -> StorageError | None:
    """The one-line StorageError for a write that met a full or unwritable disk, else None."""
    if isinstance(err, ExportInputError | ExportCheckError):
        return None
    seen: BaseException | None = err
    while seen is not None and not (isinstance(seen, OSError) and seen.errno in DISK_ERRNOS):
        seen = seen.__cause__ or seen.__context__
    if seen is None:  # safetensors' Rust error names ENOSPC in its text; numpy's tofile reports a short write
        short = isinstance(err, OSError) and re.fullmatch(r"\d+ requested and \d+ written", str(err))
        if not short and "No space left on device" not in str(err):
            return None
    fix = "Free space or pass --out DIR on a larger disk; the partial export was removed."
    return write_failure(f"the {fmt} export", target, seen or err, need_bytes, fix)


def _publish_failed(tmp: Path, target: Path) -> Path:
    failed = target.with_name(target.name + ".check-failed")
    shutil.rmtree(failed, ignore_errors=True)
    os.rename(tmp, failed)
    return failed


def _write_one(
    merged: Merged, base: Baseline | None, source: ExportSource, request: ExportRequest, fmt: str, target: Path
) -> None:
    """Write and check one format into a temporary folder renamed to `target` only when both succeed."""
    with atomic_dir(target, replace=True) as tmp:  # a failed write or check leaves `target` as it was
        try:
            record = _write_and_check(merged, base, source, request, fmt, tmp)
        except (GGUFExportError, TokenizerExportError) as err:
            raise ExportInputError(f"{fmt} export of {source.label}: {err}") from err
        if record["passed"] is False:
            failed = _publish_failed(tmp, target)
            raise ExportCheckError(
                f"the {fmt} export answers differently from the merged model: "
                + "; ".join(record["failures"])
                + f". Kept for inspection in {failed} ({CHECK_FILE})."
            )


def export(request: ExportRequest) -> dict[str, Path]:
    """Merge the run's adapter and write each requested format, each checked; returns {format: folder}."""
    _validate(request)
    source = resolve_source(request.path, request.base)
    paths = targets(request, source)
    _refuse_existing(paths, request.overwrite)
    if "gguf" in paths:  # before the merge: an architecture llama.cpp would run differently is refused at once
        try:
            check_gguf_supported(base_config(source.model_cfg))
        except GGUFExportError as err:
            raise ExportInputError(str(err)) from err
    need = _check_space(source, request, paths)
    log.info("exporting %s to %s (estimated %s)", source.adapter_dir, paths, {k: size_text(v) for k, v in need.items()})
    started = time.perf_counter()
    merged = merge_adapter(source, request.base_mismatch_ok)
    merged_s = time.perf_counter() - started
    base = None
    if request.check:
        probes = gate.gate_probes(source.run_dir)
        base = Baseline(
            reference(merged.model, merged.tokenizer), probes, gate.answers(merged.model, merged.tokenizer, probes)
        )
    merged.seconds = {"merge_s": round(merged_s, 1), "reference_s": round(time.perf_counter() - started - merged_s, 1)}
    for fmt, target in paths.items():
        try:
            _write_one(merged, base, source, request, fmt, target)
        except Exception as err:  # a disk that filled or turned read-only mid-write: one line, the free space
            full = _disk_failure(err, fmt, target, need[fmt])  # measured after atomic_dir removed the partial files
            if full is None:
                raise
            raise full from err
        log.info("%s export written and checked: %s", fmt, target)
    return paths
