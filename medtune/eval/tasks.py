"""lm-eval task definitions generated from the prepared local data: no hub access, the same prompt as training.

Each task name maps to a `TaskSpec` (which medtune.data source or view, which split, which language).
`build_task_data` loads the records through `medtune.data.load_records`, draws the `limit` subset with a fixed
seed (so two models are scored on the same questions), and renders every question with the project's MCQ prompt.
`write_task_files` writes, per task, the questions as JSON Lines and one lm-eval YAML per scoring pass into a
folder that `TaskManager(include_path=...)` reads:

    <task>.yaml                 multiple_choice; continuation " A", " B", ... (letter) or " <option text>" (cloze)
    <task>_gold_text.yaml       (letter scoring) log-likelihood of " <gold option text>" after the prompt
    <task>_letters.yaml         (cloze scoring) the letter pass too, for the gold-letter log-likelihood

Main tasks carry the lm-eval tag `lang_<language>` (groups lang_ko, lang_en, lang_ja, ...). A multiple-choice
dataset declared in data.datasets is a task of the same name (its eval_split scored, few-shot from its train split):
`all_tasks(data_cfg)` lists them next to TASKS.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medtune.config import DataConfig
from medtune.data import load_records
from medtune.data.prompts import prompt_words, render_mcq_prompt
from medtune.data.schema import LETTERS, mcq

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    """Where one evaluation task's questions come from (sources and views of medtune.data)."""

    language: str  # a BCP 47 code: ko, en, or a declared dataset's language
    source: str  # a medtune.data source or view, e.g. kormedmcqa_doctor (one subject) or mmlu_medical
    split: str
    fewshot: str | None = None  # "<source>:<split>" holding few-shot examples
    domain: str = "medical"  # medical tasks pool into eval/lang/<language>; general ones stay per task


TASKS: dict[str, TaskSpec] = {
    **{
        f"kormedmcqa_{s}": TaskSpec("ko", f"kormedmcqa_{s}", "test", fewshot=f"kormedmcqa_{s}:fewshot")
        for s in ("doctor", "nurse", "pharm", "dentist")
    },
    "kormed_law": TaskSpec("ko", "kormed_law", "test", fewshot="kormed_law:train"),  # the 239-question law block
    "medqa_4opt": TaskSpec("en", "medqa_4opt", "test", fewshot="medqa_4opt:dev"),
    # MedMCQA's only offline split is dev (the split lm-eval scores); it is also a training source in
    # medtune/conf/data_mix/medical.yaml, so it is not held out when that mix is used.
    "medmcqa": TaskSpec("en", "medmcqa", "dev"),
    "mmlu_medical": TaskSpec("en", "mmlu_medical", "test", fewshot="mmlu_medical:dev"),
    "pubmedqa": TaskSpec("en", "pubmedqa", "test", fewshot="pubmedqa:train"),
    # Non-medical, non-health MMLU subjects: the general-knowledge forgetting probe.
    "mmlu_general": TaskSpec("en", "mmlu_general", "test", fewshot="mmlu_general:dev", domain="general"),
    "sample_ko": TaskSpec("ko", "sample_ko", "test", fewshot="sample_ko:train"),
    "sample_en": TaskSpec("en", "sample_en", "test", fewshot="sample_en:train"),
}


def declared_tasks(data_cfg: DataConfig) -> dict[str, TaskSpec]:
    """The multiple-choice datasets declared in data.datasets, as tasks (few-shot from train when declared)."""
    out = {}
    for name, ds in (data_cfg.datasets if data_cfg is not None else {}).items():
        if ds.format == "mcq":
            fewshot = None if ds.eval_split == "train" else f"{name}:train"
            out[name] = TaskSpec(ds.language, name, ds.eval_split, fewshot=fewshot, domain=ds.domain)
    return out


def all_tasks(data_cfg: DataConfig) -> dict[str, TaskSpec]:
    """Every task a run can name: the built-in TASKS and the declared multiple-choice datasets."""
    return TASKS | declared_tasks(data_cfg)


def _prompt_version() -> str:
    """A hash of how two reference questions render: changes whenever the prompt wording changes."""

    probes = [mcq("probe", "test", "0", lang, "s", "q?", ["x", "y"], 0, context="c") for lang in ("ko", "en")]
    return "mcq-" + hashlib.sha256("\n".join(map(render_mcq_prompt, probes)).encode()).hexdigest()[:12]


PROMPT_VERSION = _prompt_version()


@dataclass
class TaskData:
    """One task's rendered questions (and few-shot examples), ready to be written for lm-eval."""

    name: str
    spec: TaskSpec
    docs: list[dict[str, Any]]
    fewshot_docs: list[dict[str, Any]] = field(default_factory=list)

    def fingerprint(self) -> str:
        """Hash of what is scored (ids, prompts, golds), for cache keys."""
        blob = json.dumps([(d["id"], d["prompt"], d["answer_index"]) for d in self.docs], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def record_to_doc(record: Any, where: str, words: Mapping | None = None) -> dict[str, Any]:
    """A Record as an lm-eval document; refuses open questions and answers outside the options."""
    if record.kind != "mcq" or record.answer_index is None:
        raise ValueError(f"{where}: record {record.id} is kind={record.kind!r}; evaluation tasks need mcq records.")
    n = len(record.choices)
    if not 2 <= n <= len(LETTERS) or not 0 <= record.answer_index < n:
        raise ValueError(f"{where}: record {record.id} has {n} choices and answer_index={record.answer_index}.")
    texts = [str(c).strip() for c in record.choices]
    return {
        "id": record.id,
        "language": record.language,
        "subject": record.subject,
        "prompt": render_mcq_prompt(record, words=words),
        "letters": list(LETTERS[:n]),
        "texts": texts,
        "answer_index": int(record.answer_index),
        "gold_letter_cont": " " + LETTERS[record.answer_index],
        "gold_text_cont": " " + texts[record.answer_index],
    }


def _default_loader() -> Callable[[str, str, Any], list[Any]]:

    return load_records


def build_task_data(
    names: Sequence[str],
    data_cfg: DataConfig,
    limit: int | None = None,
    num_fewshot: int = 0,
    seed: int = 0,
    loader: Callable[[str, str, Any], list[Any]] | None = None,
    task_limits: Mapping[str, int] | None = None,
) -> list[TaskData]:
    """Load, filter, subsample (seeded) and render the questions of each named task.

    `limit` applies to every task; `task_limits` overrides it for the tasks it names.
    """
    known = all_tasks(data_cfg)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"eval.tasks names unknown tasks {unknown}; known tasks: {sorted(known)}.")
    load = loader or _default_loader()
    words = prompt_words(data_cfg)
    out = []
    for name in names:
        spec = known[name]
        where = f"eval task {name} ({spec.source}:{spec.split})"
        if num_fewshot > 0 and spec.fewshot is None:
            raise ValueError(f"{where}: eval.num_fewshot={num_fewshot} but this task has no few-shot split.")
        records = list(load(spec.source, spec.split, data_cfg))
        if not records:
            raise ValueError(f"{where}: no records; is the source prepared (python -m medtune.data prepare)?")
        n = (task_limits or {}).get(name, limit)
        if n is not None and n < len(records):
            # Seeded by task name too, so adding a task does not change another task's subset.
            picked = set(random.Random(f"{seed}:{name}").sample(range(len(records)), n))
            records = [r for i, r in enumerate(records) if i in picked]
        shots: list[dict[str, Any]] = []
        if num_fewshot > 0 and spec.fewshot is not None:
            src, split = spec.fewshot.split(":")
            shots = [record_to_doc(r, f"{name} few-shot", words) for r in load(src, split, data_cfg)]
            if len(shots) < num_fewshot:
                raise ValueError(f"{where}: {len(shots)} few-shot examples in {spec.fewshot} < {num_fewshot}.")
        out.append(TaskData(name, spec, [record_to_doc(r, where, words) for r in records], shots))
    return out


def _write_jsonl(path: Path, docs: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")


def _task_yaml(name: str, data_files: dict[str, str], hf_cache: Path, num_fewshot: int, **fields: Any) -> dict:
    cfg = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": data_files, "cache_dir": str(hf_cache)},
        "test_split": "test",
        "doc_to_text": "{{prompt}}",
        "num_fewshot": num_fewshot,
        "metadata": {"version": PROMPT_VERSION},
    }
    if "fewshot" in data_files:
        cfg["fewshot_split"] = "fewshot"
    return cfg | fields


def write_task_files(tasks: Sequence[TaskData], out_dir: Path, scoring: str, num_fewshot: int) -> dict[str, dict]:
    """Write data and lm-eval YAMLs under out_dir; returns {task: {"main": name, "aux": name}}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    letter_mc = {"output_type": "multiple_choice", "doc_to_choice": "letters", "doc_to_target": "answer_index"}
    cloze_mc = {"output_type": "multiple_choice", "doc_to_choice": "texts", "doc_to_target": "answer_index"}
    acc = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
    acc_norm = [*acc, {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]
    gold_text = {"output_type": "loglikelihood", "doc_to_target": "gold_text_cont", "target_delimiter": ""}
    names = {}
    for task in tasks:
        data_dir = out_dir / task.name
        data_dir.mkdir(exist_ok=True)
        _write_jsonl(data_dir / "test.jsonl", task.docs)
        files = {"test": str((data_dir / "test.jsonl").resolve())}
        if task.fewshot_docs:
            _write_jsonl(data_dir / "fewshot.jsonl", task.fewshot_docs)
            files["fewshot"] = str((data_dir / "fewshot.jsonl").resolve())
        tag = {"tag": [f"lang_{task.spec.language}"]}
        if scoring == "letter":
            main = _task_yaml(task.name, files, out_dir / "hf_cache", num_fewshot, **tag, **letter_mc, metric_list=acc)
            aux_name = f"{task.name}_gold_text"
            aux = _task_yaml(aux_name, files, out_dir / "hf_cache", num_fewshot, **gold_text, metric_list=acc)
        else:
            main = _task_yaml(
                task.name, files, out_dir / "hf_cache", num_fewshot, **tag, **cloze_mc, metric_list=acc_norm
            )
            aux_name = f"{task.name}_letters"
            aux = _task_yaml(aux_name, files, out_dir / "hf_cache", num_fewshot, **letter_mc, metric_list=acc)
        for cfg in (main, aux):
            (out_dir / f"{cfg['task']}.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False))
        names[task.name] = {"main": task.name, "aux": aux_name}
    return names
