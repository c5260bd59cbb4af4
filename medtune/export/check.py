"""Does the export compute what the merged model computes? Next-token log-probabilities and answer letters.

    refs = reference(merged_model, tokenizer)                    # once, whatever the number of formats
    report = compare(refs, exported_model, exported_tokenizer, TOLERANCES["f16"])
    report["passed"], report["languages"]["ko"]["logprobs"]["max_abs_dlogp"]

Probes, per language (Korean and English): three medical sentences of our own and the first held-out questions of
medtune's built-in bilingual sample, rendered with the evaluation prompt. At every position of every probe the
export's log-probability of the actual next token and of the merged model's 10 most likely tokens is compared with
the merged model's (float32 log-softmax over the whole vocabulary): the largest and the mean |difference| must stay
within the tolerance of the export's weight type. The letter each question's answer would get (argmax over " A",
" B", ... after the prompt, as lm-eval's letter scoring) must be the same, except where the merged model put the
two letters closer than the tolerance's tie margin (a coin toss at that precision). The exported tokenizer must
turn every probe into the same ids. Anything else fails the check.

The tolerances are the measured figures of the Gemma 3 270M demo adapter (README, "Serve it") with headroom:
float32 is exact up to kernel order; the others are what rounding the weights to that type costs, and grow with it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from medtune.data.prompts import render_mcq_prompt
from medtune.data.schema import LETTERS
from medtune.data.sources.registry import sample_dir, sample_record
from medtune.eval.scoring import read_predictions

LANGUAGES = ("ko", "en")
QUESTIONS_PER_LANGUAGE = 12
TOP_K = 10
SENTENCES = {
    "ko": (
        "환자는 왼쪽 팔로 퍼지는 가슴 통증으로 입원하였고, 심전도에서 전벽 유도의 ST 분절 상승이 관찰되었다.",
        "제2형 당뇨병 환자에게는 체중 증가 없이 혈당을 낮추는 메트포르민을 대개 가장 먼저 처방한다.",
        "수술 전에 간호사는 환자의 알레르기, 금식 여부와 수술 동의서를 확인하였다.",
    ),
    "en": (
        "The patient was admitted with chest pain radiating to the left arm, and the electrocardiogram showed "
        "ST-segment elevation in the anterior leads.",
        "Metformin is usually the first medicine prescribed for type 2 diabetes because it lowers blood glucose "
        "without causing weight gain.",
        "Before surgery, the nurse checked the patient's allergies, fasting status and consent form.",
    ),
}


@dataclass(frozen=True)
class Tolerance:
    """How far an export may drift from the merged model, in nats, for one weight type."""

    max_nats: float  # the largest |Δ log p| over every compared entry
    mean_nats: float  # the mean |Δ log p|
    letter_tie_nats: float  # a question may change letter only if the merged model had them closer than this


# Measured on the 270M demo adapter (max / mean |Δ| in nats; answer letters): f16 0.046 / 0.0023, none changed;
# bf16 0.32 / 0.017, none changed; q8_0 1.35 / 0.078, 3 of 24 changed, each between letters the merged model had
# 0.22-0.29 nats apart. Limits: about 1.5-2x the max, 2.5-4x the mean, 2x the largest letter move.
TOLERANCES = {
    "float32": Tolerance(1e-4, 1e-5, 1e-4),
    "float16": Tolerance(0.1, 0.01, 0.1),
    "f16": Tolerance(0.1, 0.01, 0.1),
    "bfloat16": Tolerance(0.6, 0.05, 0.3),
    "q8_0": Tolerance(2.0, 0.2, 0.6),
}


@dataclass(frozen=True)
class Probe:
    """One prompt of the check: free text (no letters) or a question (its record id and option letters)."""

    language: str
    text: str
    letters: tuple[str, ...] = ()
    id: str = ""


@dataclass
class Reference:
    """The merged model's side of one probe: what the export must reproduce."""

    probe: Probe
    ids: list[int]
    index: torch.Tensor  # [positions, TOP_K + 1] token ids compared at each position
    logp: torch.Tensor  # the merged model's log-probabilities there
    argmax: torch.Tensor  # [positions] its most likely token
    letter_ids: list[int]
    letter_logp: torch.Tensor  # [letters] log p(" A" ...) after the prompt


def probes(questions_per_language: int | None = None) -> list[Probe]:
    """The fixed probe set: medical sentences and held-out sample questions, Korean and English."""
    count = QUESTIONS_PER_LANGUAGE if questions_per_language is None else questions_per_language
    out = []
    for lang in LANGUAGES:
        out += [Probe(lang, text) for text in SENTENCES[lang]]
        rows = [json.loads(line) for line in (sample_dir() / f"sample_{lang}.jsonl").read_text().splitlines() if line]
        tests = [sample_record(row, lang, "test") for row in rows if row["split"] == "test"]
        for record in tests[:count]:
            out.append(Probe(lang, render_mcq_prompt(record), tuple("ABCDE"[: len(record.choices)]), record.id))
    return out


def _letter_ids(tokenizer: Any, letters: tuple[str, ...]) -> list[int]:
    ids = [tokenizer(" " + letter, add_special_tokens=False)["input_ids"] for letter in letters]
    if any(len(i) != 1 for i in ids):
        raise ValueError(f"the answer letters are not single tokens for this tokenizer: {ids}")
    return [i[0] for i in ids]


@torch.no_grad()
def _log_probs(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0]
    return torch.log_softmax(logits.float(), dim=-1).cpu()


def reference(model: torch.nn.Module, tokenizer: Any) -> list[Reference]:
    """Score every probe with the merged model and keep only what the comparison reads (not the full vocab)."""
    refs = []
    for probe in tqdm(probes(), desc="check: merged model", unit="probe"):
        ids = list(tokenizer(probe.text)["input_ids"])
        logp = _log_probs(model, ids)
        top = torch.topk(logp, TOP_K, dim=-1).indices
        nxt = torch.tensor([*ids[1:], int(top[-1, 0])]).unsqueeze(1)  # the last position has no next token
        index = torch.cat([top, nxt], dim=1)
        letter_ids = _letter_ids(tokenizer, probe.letters) if probe.letters else []
        picked, best = logp.gather(1, index), logp.argmax(-1)
        refs.append(Reference(probe, ids, index, picked, best, letter_ids, logp[-1, letter_ids]))
    return refs


def _score(ref: Reference, model: torch.nn.Module, tokenizer: Any, tolerance: Tolerance) -> dict[str, Any]:
    """One probe on the candidate: |Δ log p| at the compared tokens, top-1 agreements, the letter, tokenisation."""
    logp = _log_probs(model, ref.ids)
    same_ids = list(tokenizer(ref.probe.text)["input_ids"]) == ref.ids
    out = {
        "delta": (ref.logp - logp.gather(1, ref.index)).abs().flatten(),
        "agree": int((ref.argmax == logp.argmax(-1)).sum()),
        "same_tokens": same_ids and (not ref.letter_ids or _letter_ids(tokenizer, ref.probe.letters) == ref.letter_ids),
    }
    if ref.letter_ids:
        letter_logp = logp[-1, ref.letter_ids]
        chosen, exported = int(ref.letter_logp.argmax()), int(letter_logp.argmax())
        # when the letter changed: how far apart the merged model had the two letters (None when it did not change)
        margin = float(ref.letter_logp[chosen] - ref.letter_logp[exported]) if chosen != exported else None
        out["letter"] = {
            "id": ref.probe.id,
            "ref": chosen,
            "export": exported,
            "changed_margin_nats": margin,
            "changed_near_tie": margin is not None and margin < tolerance.letter_tie_nats,
            "ref_letter_logp": ref.letter_logp.tolist(),
            "export_letter_logp": letter_logp.tolist(),
        }
    return out


def _language_figures(scored: list[dict], positions: int) -> dict[str, Any]:
    flat = torch.cat([s["delta"] for s in scored])
    letters = [s["letter"] for s in scored if "letter" in s]
    return {
        "logprobs": {
            "positions": positions,
            "max_abs_dlogp": float(flat.max()),
            "mean_abs_dlogp": float(flat.mean()),
            "top1_agreement": sum(s["agree"] for s in scored) / max(positions, 1),
        },
        "letters": {
            "questions": len(letters),
            "agree": sum(r["ref"] == r["export"] for r in letters),
            "disagree_within_tolerance": sum(r["changed_near_tie"] for r in letters),
        },
        "tokenization_mismatches": sum(not s["same_tokens"] for s in scored),
    }


def compare(refs: list[Reference], model: torch.nn.Module, tokenizer: Any, tolerance: Tolerance) -> dict[str, Any]:
    """Check the candidate against the merged model's references; returns figures, failures and `passed`."""
    per_lang, failures, questions = {}, [], []
    for lang in LANGUAGES:
        mine = [r for r in refs if r.probe.language == lang]
        bar = tqdm(mine, desc=f"check: export, {lang}", unit="probe")
        scored = [_score(r, model, tokenizer, tolerance) for r in bar]
        per_lang[lang] = _language_figures(scored, sum(len(r.ids) for r in mine))
        failures += _failures(lang, per_lang[lang], tolerance)
        questions += [s["letter"] for s in scored if "letter" in s]
    return {
        "passed": not failures,
        "tolerance_nats": asdict(tolerance),
        "languages": per_lang,
        "failures": failures,
        "questions": questions,
    }


def _failures(lang: str, figures: dict[str, Any], tolerance: Tolerance) -> list[str]:
    fails = []
    logprobs = figures["logprobs"]
    if not logprobs["max_abs_dlogp"] <= tolerance.max_nats:  # NaN fails too
        fails.append(f"{lang}: max |Δ log-prob| {logprobs['max_abs_dlogp']:.4g} nats > {tolerance.max_nats:g}")
    if not logprobs["mean_abs_dlogp"] <= tolerance.mean_nats:
        fails.append(f"{lang}: mean |Δ log-prob| {logprobs['mean_abs_dlogp']:.4g} nats > {tolerance.mean_nats:g}")
    letters = figures["letters"]
    wrong = letters["questions"] - letters["agree"] - letters["disagree_within_tolerance"]
    if wrong:
        fails.append(f"{lang}: {wrong} of {letters['questions']} questions get a different answer letter")
    if figures["tokenization_mismatches"]:
        fails.append(f"{lang}: the exported tokenizer splits {figures['tokenization_mismatches']} probe(s) differently")
    return fails


def against_evaluation(questions: list[dict[str, Any]], predictions: Path) -> dict[str, Any] | None:
    """The export's letters and letter log-likelihoods next to the run's own evaluation of the same questions.

    Informational: the evaluation may have run elsewhere in another precision (bf16 on a GPU), so this is not part
    of pass/fail; on the machine and dtype of the evaluation it should agree to ~1e-5.
    """
    if not predictions.is_file():
        return None
    evaluated = {row["id"]: row for row in read_predictions(predictions)}
    common = [(q, evaluated[q["id"]]) for q in questions if q["id"] in evaluated]
    if not common:
        return {"questions": 0}
    deltas = [abs(a - b) for q, row in common for a, b in zip(q["export_letter_logp"], row["letter_lls"], strict=True)]
    same = sum(LETTERS[q["export"]] == row["pred"] for q, row in common)
    return {"questions": len(common), "same_letter": same, "max_abs_dlogp_letters": max(deltas)}
