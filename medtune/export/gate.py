"""The export gate: does the exported model give the same ANSWERS as the merged model, in the run's own languages?

    probes = gate_probes(run_dir)                                 # the run's evaluation questions, capped per language
    ref = answers(merged_model, tokenizer, probes)                # the eval scorer (lm-eval), unquantised merge
    verdict = judge(ref, answers(exported_model, tok, probes), probes.scoring)
    verdict["passed"], verdict["changed"]                         # the questions whose chosen answer changed

Probes: the questions the run's evaluation scored, read back from its run directory (`eval/tasks/<task>/test.jsonl`,
rendered with the run's prompt words, with its few-shot examples and scoring), so every language it evaluated is
probed, declared datasets included. Up to QUESTIONS_PER_LANGUAGE per language, taken in turn from each of that
language's tasks. A run that recorded no evaluation (or a bare adapter) is probed with the built-in Korean and
English sample questions, and the record says so.

Verdict, per question (paired): the merged model's chosen answer against the export's. A change counts as a tie when
the merged model's top-2 margin (in the scoring's own units: nats for letters, nats per byte for cloze) is below
TIE_NATS: the merged model itself hardly prefers one answer there. Any other change fails the export, whatever its
weight type. TIE_NATS = 0.1 is about twice the largest log-prob drift that f16 rounding caused on the 270M demo
(0.046 nats): a margin that small is decided by the rounding of the finest GGUF type, not by the model.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medtune.config import DataConfig
from medtune.eval.scoring import score
from medtune.eval.tasks import TaskData, TaskSpec, build_task_data, write_task_files

TIE_NATS = 0.1
QUESTIONS_PER_LANGUAGE = 40  # 2 languages x 40 questions x 2 models: about 2 minutes for the 270M on 2 CPU cores
BATCH_SIZE = 8
BUILTIN_TASKS = ("sample_ko", "sample_en")


@dataclass
class GateProbes:
    """The questions the gate asks, and how the run scored them."""

    tasks: list[TaskData]
    num_fewshot: int = 0
    scoring: str = "letter"
    origin: str = ""  # where the questions came from, for the record and the card
    languages: list[str] = field(default_factory=list)
    per_language: int = 0  # the cap it was drawn with


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _recorded_tasks(task_dir: Path) -> tuple[list[TaskData], int, str]:
    """The main tasks lm-eval scored in this run (their YAML carries the lang_<language> tag), as TaskData."""
    tasks, fewshot, scoring = [], 0, "letter"
    for path in sorted(task_dir.glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        tags = [t for t in cfg.get("tag", []) if str(t).startswith("lang_")]
        data = task_dir / cfg.get("task", "") / "test.jsonl"
        if not tags or not data.is_file():
            continue  # an auxiliary pass (gold text / letters), or a task whose data is gone
        shots_file = data.with_name("fewshot.jsonl")
        shots = _read_jsonl(shots_file) if shots_file.is_file() else []
        spec = TaskSpec(tags[0].removeprefix("lang_"), cfg["task"], "test")
        tasks.append(TaskData(cfg["task"], spec, _read_jsonl(data), shots))
        fewshot = int(cfg.get("num_fewshot") or 0)
        scoring = "letter" if cfg.get("doc_to_choice") == "letters" else "cloze"
    return tasks, fewshot, scoring


def _cap(tasks: list[TaskData], per_language: int) -> list[TaskData]:
    """Up to per_language questions per language, taken in turn from each of its tasks (in file order)."""
    left: dict[str, int] = {}
    queues = {t.name: list(t.docs) for t in tasks}
    kept: dict[str, list[dict[str, Any]]] = {t.name: [] for t in tasks}
    while any(queues.values()):
        for task in tasks:
            lang = task.spec.language
            if queues[task.name] and left.setdefault(lang, per_language) > 0:
                kept[task.name].append(queues[task.name].pop(0))
                left[lang] -= 1
            elif left.get(lang, 1) <= 0:
                queues[task.name] = []
    return [TaskData(t.name, t.spec, kept[t.name], t.fewshot_docs) for t in tasks if kept[t.name]]


def gate_probes(run_dir: Path | None, per_language: int | None = None) -> GateProbes:
    """The run's own evaluation questions (every language it evaluated), else the built-in sample's."""
    per_language = QUESTIONS_PER_LANGUAGE if per_language is None else per_language
    task_dir = run_dir / "eval" / "tasks" if run_dir else None
    tasks, fewshot, scoring = _recorded_tasks(task_dir) if task_dir and task_dir.is_dir() else ([], 0, "letter")
    if tasks:
        origin = f"the run's own evaluation questions ({task_dir})"
    else:
        tasks = build_task_data(list(BUILTIN_TASKS), DataConfig())
        why = "no run directory" if run_dir is None else f"the run recorded no evaluation tasks ({task_dir})"
        origin = f"the built-in Korean and English sample questions ({why})"
    tasks = _cap(tasks, per_language)
    languages = list(dict.fromkeys(t.spec.language for t in tasks))
    return GateProbes(tasks, fewshot, scoring, origin, languages, per_language)


def answers(model: Any, tokenizer: Any, probes: GateProbes, scorer: str = "continuation") -> list[dict[str, Any]]:
    """Every probe question scored by medtune's evaluation scorer: one prediction row per question."""
    with tempfile.TemporaryDirectory(prefix="medtune-gate-") as tmp:
        task_dir = Path(tmp) / "tasks"
        names = write_task_files(probes.tasks, task_dir, probes.scoring, probes.num_fewshot)
        rows = score(
            model, tokenizer, probes.tasks, task_dir, names, probes.scoring, BATCH_SIZE, Path(tmp) / "out",
            scorer=scorer,
        )  # fmt: skip
    if probes.scoring == "cloze":  # the scorer picks by log-likelihood per byte of " <option>": keep those numbers
        texts = {(t.name, d["id"]): d["texts"] for t in probes.tasks for d in t.docs}
        for row in rows:
            options = texts[(row["task"], row["id"])]
            row["choice_lls_per_byte"] = [
                ll / len((" " + t).encode()) for ll, t in zip(row["choice_lls"], options, strict=True)
            ]
    return rows


def _decision_scores(row: dict[str, Any], scoring: str) -> list[float]:
    """The numbers the answer was chosen by: letter log-likelihoods, or per-byte option log-likelihoods (cloze)."""
    return list(row["choice_lls_per_byte" if scoring == "cloze" else "choice_lls"])


def margin(row: dict[str, Any], scoring: str = "letter") -> float:
    """How far the chosen answer is ahead of the runner-up (>= 0)."""
    top = sorted(_decision_scores(row, scoring), reverse=True)
    return top[0] - top[1] if len(top) > 1 else float("inf")


def judge(
    reference: list[dict[str, Any]], exported: list[dict[str, Any]], scoring: str = "letter", tie_nats: float = TIE_NATS
) -> dict[str, Any]:
    """Pair the rows by (task, id); per language: questions, same answer, ties, changes. Fails on any change."""
    theirs = {(r["task"], r["id"]): r for r in exported}
    per_lang: dict[str, dict[str, int]] = {}
    changed, ties, missing = [], [], []
    for ref in reference:
        figures = per_lang.setdefault(ref["language"], {"questions": 0, "same": 0, "ties": 0, "changed": 0})
        figures["questions"] += 1
        row = theirs.get((ref["task"], ref["id"]))
        if row is None:
            missing.append(ref["id"])
            figures["changed"] += 1
            continue
        if row["pred"] == ref["pred"]:
            figures["same"] += 1
            continue
        gap = margin(ref, scoring)
        entry = {
            "task": ref["task"], "id": ref["id"], "language": ref["language"], "gold": ref["gold"],
            "merged": ref["pred"], "export": row["pred"], "merged_margin_nats": round(gap, 4),
        }  # fmt: skip
        (ties if gap < tie_nats else changed).append(entry)
        figures["ties" if gap < tie_nats else "changed"] += 1
    failures = [
        f"{lang}: {f['changed']} of {f['questions']} answers changed (beyond ties)"
        for lang, f in per_lang.items()
        if f["changed"]
    ]
    if missing:
        failures.append(f"{len(missing)} questions got no answer from the export: {missing[:5]}")
    return {
        "passed": not failures,
        "tie_nats": tie_nats,
        "languages": per_lang,
        "changed": changed,
        "ties": ties,
        "failures": failures,
    }
