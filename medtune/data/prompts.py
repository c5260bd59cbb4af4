"""Prompts and training labels: one rendering of a question for training and for evaluation.

Plain template (the default), English record; the target is " C" (answer_format=letter) or " C. Ceftriaxone"
(letter_text); Korean records say 질문/정답 (and 답변 for open questions), any other language the words of
data.prompt_words.<language> (a language with none uses the English words, logged once):

    Question: A 21-year-old man ... which of the following was given?
    A. Gentamicin
    B. Ciprofloxacin
    C. Ceftriaxone
    D. Trimethoprim
    Answer:

With chat_template=True and a tokenizer that has a chat template, the same question (plus a one-line instruction)
is the user turn and the target is the assistant turn. `encode_example` masks the prompt with -100 when
data.loss_on=answer and ends the target with EOS; a chat record (a whole conversation) is encoded by
medtune.data.chat, with labels on its assistant turns only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from medtune.config import DataConfig
from medtune.data.chat import bos_prefix, encode_chat, token_ids
from medtune.data.schema import IGNORE_INDEX, LETTERS, Record

log = logging.getLogger(__name__)
# The built-in words (the paper's prompts); data.prompt_words adds languages or replaces words (PROMPT_WORD_KEYS).
WORDS = {
    "ko": {
        "question": "질문",
        "answer": "정답",
        "open_answer": "답변",
        "instruction": "정답의 기호를 고르세요.",
        "user": "사용자",
        "assistant": "어시스턴트",
    },
    "en": {
        "question": "Question",
        "answer": "Answer",
        "open_answer": "Answer",
        "instruction": "Answer with the letter of the correct option.",
        "user": "User",
        "assistant": "Assistant",
    },
}
NEUTRAL = "en"  # the template of a language without words: English scaffolding around the language's own text
TEMPLATES = ("plain", "chat")
_NEUTRAL_SAID: set[str] = set()  # languages already logged as using the neutral template


def prompt_words(data_cfg: DataConfig | None = None) -> dict[str, dict[str, str]]:
    """The words of every language: the built-in ones with data.prompt_words laid over them."""
    table = {lang: dict(words) for lang, words in WORDS.items()}
    for lang, words in ((data_cfg.prompt_words if data_cfg is not None else None) or {}).items():
        base = table.get(lang) or {**WORDS[NEUTRAL], "open_answer": words.get("answer", WORDS[NEUTRAL]["answer"])}
        table[lang] = {**base, **words}
    return table


def words_for(language: str, table: Mapping[str, dict[str, str]] | None = None) -> dict[str, str]:
    """The words of `language` (or of its primary subtag: pt-BR -> pt), else the neutral ones, said once."""
    table = table if table is not None else WORDS
    for lang in (language, language.split("-")[0]):
        if lang in table:
            return table[lang]
    if language not in _NEUTRAL_SAID:
        _NEUTRAL_SAID.add(language)
        log.warning(
            "no prompt words for language %r: its prompts use the neutral template (English cue words around "
            "its text); set data.prompt_words.%s, e.g. {question: ..., answer: ...}, to give it its own",
            language,
            language,
        )
    return table.get(NEUTRAL, WORDS[NEUTRAL])


def render_prompt(
    record: Record, language: str | None = None, template: str = "plain", words: Mapping | None = None
) -> str:
    """The question without its answer: context, question, lettered options, then the cue (plain) or instruction."""
    if template not in TEMPLATES:
        raise ValueError(f"prompt template {template!r} is not one of {list(TEMPLATES)}.")
    said = words_for(language or record.language, words)
    lines = [record.context.strip(), ""] if record.context.strip() else []
    lines.append(f"{said['question']}: {record.question.strip()}")
    lines += [f"{LETTERS[i]}. {choice.strip()}" for i, choice in enumerate(record.choices)]
    if template == "chat":
        if record.kind == "mcq":
            lines.append(said["instruction"])
    else:
        lines.append(f"{said['answer']}:" if record.kind == "mcq" else f"{said['open_answer']}:")
    return "\n".join(lines)


def render_mcq_prompt(record: Record, language: str | None = None, words: Mapping | None = None) -> str:
    """The plain MCQ prompt without its answer (lm-eval doc_to_text); continuations are ' A', ' B', ..."""
    if record.kind != "mcq":
        raise ValueError(f"record {record.id} is kind={record.kind!r}; render_mcq_prompt needs an mcq record.")
    return render_prompt(record, language, "plain", words)


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
    record: Record,
    language: str | None = None,
    template: str = "plain",
    answer_format: str = "letter_text",
    words: Mapping | None = None,
) -> tuple[str, str]:
    """(prompt, target) of a record; `language` overrides the record's wording; `words`: see prompt_words."""
    return render_prompt(record, language, template, words), render_target(record, answer_format, template)


def _chat_texts(record: Record, tokenizer: Any, answer_format: str, words: Mapping) -> tuple[str, str]:
    """(prompt text up to the assistant turn, the assistant turn) rendered by the tokenizer's chat template."""
    prompt, target = format_prompt(record, template="chat", answer_format=answer_format, words=words)
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
    words = prompt_words(data_cfg)
    if record.kind == "chat":
        return encode_chat(record, tokenizer, words_for(record.language, words), data_cfg.loss_on)
    use_chat = chat_template and bool(getattr(tokenizer, "chat_template", None))
    if chat_template and not use_chat:
        log.warning("model.chat_template=true but the tokenizer has no chat template: using the plain template")
    if use_chat:
        prompt_text, target_text = _chat_texts(record, tokenizer, data_cfg.answer_format, words)
    else:
        prompt_text, target_text = format_prompt(record, answer_format=data_cfg.answer_format, words=words)
    prompt_ids = token_ids(tokenizer, prompt_text)
    bos = bos_prefix(tokenizer)
    if bos and prompt_ids[:1] != bos:  # a chat template may already spell out <bos>: never add a second one
        prompt_ids = bos + prompt_ids
    target_ids = token_ids(tokenizer, target_text)
    if target_ids[-1:] != [eos]:
        target_ids.append(eos)
    input_ids = prompt_ids + target_ids
    masked = [IGNORE_INDEX] * len(prompt_ids) if data_cfg.loss_on == "answer" else prompt_ids
    labels = masked + target_ids
    return {"input_ids": input_ids, "labels": labels, "id": record.id, "language": record.language}
