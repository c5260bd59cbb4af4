"""Prompts and training labels: one rendering of a question for training and for evaluation.

Plain template (the default), English record; the target is " C" (answer_format=letter) or " C. Ceftriaxone"
(letter_text); Korean records say 질문/정답 (and 답변 for open questions):

    Question: A 21-year-old man ... which of the following was given?
    A. Gentamicin
    B. Ciprofloxacin
    C. Ceftriaxone
    D. Trimethoprim
    Answer:

With chat_template=True and a tokenizer that has a chat template, the same question (plus a one-line instruction)
is the user turn and the target is the assistant turn. `encode_example` masks the prompt with -100 when
data.loss_on=answer and ends the target with EOS.
"""

from __future__ import annotations

import logging
from typing import Any

from medtune.config import DataConfig
from medtune.data.schema import IGNORE_INDEX, LETTERS, Record

log = logging.getLogger(__name__)
WORDS = {
    "ko": {"question": "질문", "mcq_cue": "정답:", "open_cue": "답변:", "instruction": "정답의 기호를 고르세요."},
    "en": {
        "question": "Question",
        "mcq_cue": "Answer:",
        "open_cue": "Answer:",
        "instruction": "Answer with the letter of the correct option.",
    },
}
TEMPLATES = ("plain", "chat")


def _words(record: Record, language: str | None) -> dict[str, str]:
    lang = language or record.language
    if lang not in WORDS:
        raise ValueError(f"no prompt wording for language {lang!r}; use one of {sorted(WORDS)}.")
    return WORDS[lang]


def render_prompt(record: Record, language: str | None = None, template: str = "plain") -> str:
    """The question without its answer: context, question, lettered options, then the cue (plain) or instruction."""
    if template not in TEMPLATES:
        raise ValueError(f"prompt template {template!r} is not one of {list(TEMPLATES)}.")
    words = _words(record, language)
    lines = [record.context.strip(), ""] if record.context.strip() else []
    lines.append(f"{words['question']}: {record.question.strip()}")
    lines += [f"{LETTERS[i]}. {choice.strip()}" for i, choice in enumerate(record.choices)]
    if template == "chat":
        if record.kind == "mcq":
            lines.append(words["instruction"])
    else:
        lines.append(words["mcq_cue"] if record.kind == "mcq" else words["open_cue"])
    return "\n".join(lines)


def render_mcq_prompt(record: Record, language: str | None = None) -> str:
    """The plain MCQ prompt without its answer (lm-eval doc_to_text); continuations are ' A', ' B', ..."""
    if record.kind != "mcq":
        raise ValueError(f"record {record.id} is kind={record.kind!r}; render_mcq_prompt needs an mcq record.")
    return render_prompt(record, language, "plain")


def render_target(record: Record, answer_format: str = "letter_text", template: str = "plain") -> str:
    """The answer: ' C' / ' C. <text>' for MCQs, ' <answer>' for open QA (no leading space in chat turns)."""
    if record.kind == "mcq":
        if record.answer_index is None:
            raise ValueError(f"record {record.id} is an mcq without answer_index.")
        letter = LETTERS[record.answer_index]
        if answer_format == "letter":
            text = letter
        elif answer_format == "letter_text":
            text = f"{letter}. {record.choices[record.answer_index].strip()}"
        else:
            raise ValueError(f"answer_format {answer_format!r} is not one of ['letter', 'letter_text'].")
    else:
        text = record.answer_text.strip()
    return text if template == "chat" else " " + text


def format_prompt(
    record: Record, language: str | None = None, template: str = "plain", answer_format: str = "letter_text"
) -> tuple[str, str]:
    """(prompt, target) of a record; `language` overrides the record's wording (ko | en)."""
    return render_prompt(record, language, template), render_target(record, answer_format, template)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _bos_prefix(tokenizer: Any) -> list[int]:
    """[bos] when the tokenizer puts BOS in front of a text (Gemma, Llama), else []."""
    bos = tokenizer.bos_token_id
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [bos] if bos is not None and probe and probe[0] == bos else []


def _chat_texts(record: Record, tokenizer: Any, answer_format: str) -> tuple[str, str]:
    """(prompt text up to the assistant turn, the assistant turn) rendered by the tokenizer's chat template."""
    prompt, target = format_prompt(record, template="chat", answer_format=answer_format)
    user = [{"role": "user", "content": prompt}]
    head = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": target}], tokenize=False)
    if not full.startswith(head):
        raise ValueError(
            "the tokenizer's chat template renders the conversation so that the prompt is not a prefix of it; "
            "set model.chat_template=false to use the plain template."
        )
    return head, full[len(head) :]


def encode_example(record: Record, tokenizer: Any, data_cfg: DataConfig, chat_template: bool = False) -> dict:
    """Token ids and labels of one record: prompt masked with -100 (data.loss_on=answer), target ends with EOS."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; set tokenizer.eos_token so targets can end.")
    use_chat = chat_template and bool(getattr(tokenizer, "chat_template", None))
    if chat_template and not use_chat:
        log.warning("model.chat_template=true but the tokenizer has no chat template: using the plain template")
    if use_chat:
        prompt_text, target_text = _chat_texts(record, tokenizer, data_cfg.answer_format)
    else:
        prompt_text, target_text = format_prompt(record, answer_format=data_cfg.answer_format)
    prompt_ids = _ids(tokenizer, prompt_text)
    bos = _bos_prefix(tokenizer)
    if bos and prompt_ids[:1] != bos:  # a chat template may already spell out <bos>: never add a second one
        prompt_ids = bos + prompt_ids
    target_ids = _ids(tokenizer, target_text)
    if target_ids[-1:] != [eos]:
        target_ids.append(eos)
    input_ids = prompt_ids + target_ids
    masked = [IGNORE_INDEX] * len(prompt_ids) if data_cfg.loss_on == "answer" else prompt_ids
    labels = masked + target_ids
    return {"input_ids": input_ids, "labels": labels, "id": record.id, "language": record.language}
