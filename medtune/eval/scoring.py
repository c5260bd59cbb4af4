"""Drive lm-eval on an in-memory model and turn its per-sample logs into one prediction row per question.

    rows = score(model, tokenizer, tasks, task_dir, scoring="letter", batch_size=8, out_dir=run_dir / "eval/base")

The model (a transformers model or a peft model) is wrapped in lm-eval's `HFLM` as it is: no reload, no hub; an
lm-eval model object (an `lm_eval.api.model.LM`, e.g. the export gate's llama.cpp model) is used as it is.
Each row: task, id, language, domain, subject, gold, pred, correct, choice_lls, letter_lls, gold_ll_letter,
gold_ll_text.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtune.data.schema import LETTERS
from medtune.eval.base_cache import predictions_jsonl
from medtune.eval.continuation import ContinuationLM
from medtune.eval.ranks import Ranks, SpreadHFLM
from medtune.eval.tasks import TaskData

log = logging.getLogger(__name__)

# Nothing in an evaluation may reach the hub: the datasets are local JSON files and the model is in memory.
# lm-eval still asks the hub for a model SHA when it records its config; offline mode makes that fail at once.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _lls(sample: dict[str, Any]) -> list[float]:
    return [float(resp[0]) for resp in sample["filtered_resps"]]


def _by_id(samples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["doc"]["id"]: s for s in samples}


def _rows_for_task(task: TaskData, main: list[dict], aux: list[dict], scoring: str) -> list[dict[str, Any]]:
    """Join the main multiple-choice pass with the auxiliary pass on the question id."""
    aux_by_id = _by_id(aux)
    rows = []
    for sample in main:
        doc = sample["doc"]
        gold = int(doc["answer_index"])
        choice_lls = _lls(sample)
        # lm-eval's own per-sample verdict: acc (argmax log-likelihood) or acc_norm (per byte, for cloze).
        metric = "acc" if scoring == "letter" else "acc_norm"
        correct = bool(sample[metric])
        if scoring == "cloze":
            norm = [ll / len((" " + t).encode()) for ll, t in zip(choice_lls, doc["texts"], strict=True)]
            pred = max(range(len(norm)), key=norm.__getitem__)
        else:
            pred = max(range(len(choice_lls)), key=choice_lls.__getitem__)
        other = aux_by_id[doc["id"]]
        if scoring == "letter":
            letter_lls, gold_ll_text = choice_lls, _lls(other)[0]
        else:
            letter_lls, gold_ll_text = _lls(other), choice_lls[gold]
        rows.append(
            {
                "task": task.name,
                "id": doc["id"],
                "language": doc["language"],
                "domain": task.spec.domain,  # medical questions pool per language; a general probe stays apart
                "subject": doc["subject"],
                "gold": LETTERS[gold],
                "pred": LETTERS[pred],
                "correct": correct,
                "n_choices": len(choice_lls),
                "choice_lls": choice_lls,
                "letter_lls": letter_lls,
                "gold_ll_letter": letter_lls[gold],
                "gold_ll_text": gold_ll_text,
            }
        )
    return rows


def _write_samples(path: Path, samples: dict[str, list[dict]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for task_name, items in samples.items():
            for s in items:
                keep = {k: s[k] for k in ("doc_id", "target", "arguments", "filtered_resps", "doc") if k in s}
                f.write(json.dumps({"task": task_name, **keep}, ensure_ascii=False, default=str) + "\n")


def write_predictions(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """One JSON line per question."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(predictions_jsonl(rows))


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """Rows written by write_predictions; a line that is not a JSON object (a write cut short) is a ValueError
    naming the file and line: a report built without that question would be built on other numbers."""
    rows = []
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                row = f"{err.msg} at column {err.colno}"
            if not isinstance(row, dict):
                raise ValueError(
                    f"{path}:{number}: not a JSON object ({row}; a write cut short?); re-run this evaluation "
                    "(python -m medtune.evaluate with the run's config) to rewrite the file; it is left as it is."
                )
            rows.append(row)
    return rows


def score(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[TaskData],
    task_dir: Path,
    names: dict[str, dict[str, str]],
    scoring: str,
    batch_size: int,
    out_dir: Path,
    seed: int = 0,
    max_length: int | None = None,
    ranks: Ranks | None = None,
    scorer: str = "continuation",
) -> list[dict[str, Any]]:
    """Score every task through lm-eval; write predictions.jsonl and lm-eval's samples.jsonl under out_dir.

    Under torchrun every rank calls this with the same arguments (`ranks` says how the questions are spread); every
    rank returns all rows, and only rank 0 writes.
    """
    ranks = ranks or Ranks()
    requested = [n for t in tasks for n in (names[t.name]["main"], names[t.name]["aux"])]
    run = _LmEvalRun(model, tokenizer, task_dir, requested, seed, max_length, ranks, scorer)
    started = time.perf_counter()
    was_training = getattr(model, "training", None)
    try:
        results, batch_size = run.with_retries(batch_size)
    finally:
        if was_training is not None:
            model.train(was_training)
    elapsed_s = time.perf_counter() - started
    samples = results["samples"]
    rows = []
    for task in tasks:
        rows += _rows_for_task(task, samples[names[task.name]["main"]], samples[names[task.name]["aux"]], scoring)
    if ranks.is_main:
        log.info(
            "lm-eval scored %d questions in %.1f s (%.3f s/question, batch %d, %d rank(s))",
            len(rows), elapsed_s, elapsed_s / max(len(rows), 1), batch_size, ranks.world_size,
        )  # fmt: skip
        out_dir.mkdir(parents=True, exist_ok=True)
        write_predictions(out_dir / "predictions.jsonl", rows)
        _write_samples(out_dir / "samples.jsonl", samples)
        record = {"results": results["results"], "elapsed_s": elapsed_s, "batch_size": batch_size, "scorer": scorer}
        (out_dir / "lm_eval_results.json").write_text(
            json.dumps(record | {"ranks": ranks.world_size}, indent=1, default=str)
        )
    return rows


def quiet_git_describe() -> str | None:
    """`git describe --always` of the working directory, or None outside a git checkout, with nothing on stderr."""
    try:
        proc = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):  # no git installed, or a hung file system
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


@contextmanager
def _quiet_git() -> Iterator[None]:
    """lm-eval runs `git describe` for its results with git's stderr on ours: outside a checkout (an installed
    medtune) that printed `fatal: not a git repository` into every run; the same lookup, silent, replaces it."""
    import lm_eval.evaluator as evaluator

    loud = evaluator.get_git_commit_hash
    evaluator.get_git_commit_hash = quiet_git_describe
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = loud


@dataclass
class _LmEvalRun:
    """One lm-eval evaluation of an in-memory model on generated tasks (with its out-of-memory retries)."""

    model: Any
    tokenizer: Any
    task_dir: Path
    requested: list[str]
    seed: int
    max_length: int | None
    ranks: Ranks
    scorer: str

    def with_retries(self, batch_size: int) -> tuple[dict[str, Any], int]:
        """lm-eval's results, at `batch_size` or, after running out of GPU memory, half of it (one process)."""
        import torch

        while True:
            try:
                return self.once(batch_size), batch_size
            except torch.OutOfMemoryError:
                # lm-eval's HFLM holds batch x length x vocabulary logits (~24 GB at batch 16 for Gemma 3's 262k
                # vocabulary): on a shared or small GPU a smaller batch scores the same questions. Not under
                # torchrun: the other ranks are inside this rank's collectives, so the run fails instead.
                if batch_size == 1 or self.ranks.spread:
                    raise
                torch.cuda.empty_cache()
                log.warning(
                    "lm-eval ran out of GPU memory at eval.batch_size=%d; retrying at %d. In bf16 the batch size moves"
                    " scores slightly (padding): compare with a base scored at the same batch (set eval.batch_size)",
                    batch_size,
                    batch_size // 2,
                )
                batch_size //= 2

    def once(self, batch_size: int) -> dict[str, Any]:
        """simple_evaluate over the generated tasks, seeded; every rank gets the results (see ranks.py)."""
        from lm_eval import simple_evaluate
        from lm_eval.api.model import LM
        from lm_eval.tasks import TaskManager

        # include_defaults=False: only our generated tasks are indexed (lm-eval's thousands of YAMLs take seconds).
        manager = TaskManager(include_path=str(self.task_dir), include_defaults=False)
        lm_class = ContinuationLM if self.scorer == "continuation" else SpreadHFLM
        lm = self.model if isinstance(self.model, LM) else lm_class(
            self.ranks, pretrained=self.model, tokenizer=self.tokenizer, batch_size=batch_size,
            max_length=self.max_length,
        )  # fmt: skip
        with self.ranks.as_local_main(), _quiet_git():
            return simple_evaluate(
                model=lm,
                tasks=self.requested,
                task_manager=manager,
                log_samples=True,
                bootstrap_iters=0,  # our own intervals (Wilson, paired bootstrap) replace lm-eval's stderr
                random_seed=self.seed,
                numpy_random_seed=self.seed,
                torch_random_seed=self.seed,
                fewshot_random_seed=self.seed,
            )
