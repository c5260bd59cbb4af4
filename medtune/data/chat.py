"""Conversations as training examples: rendered turn by turn, labels on the assistant turns only.

With a tokenizer that has a chat template the conversation is rendered by it; each assistant turn is the text the
template adds between the prompt that ends with the generation cue (`add_generation_prompt=True`) and the
conversation that includes that turn. For a Gemma-like template and [user, assistant, user, assistant]:

    <bos><start_of_turn>user Q1<end_of_turn> <start_of_turn>model | A1<end_of_turn> | <start_of_turn>user ...
    ------------------ masked (-100) ----------------------------   --- labels ---   ------ masked ----- ...

and EOS after the last turn. Without a chat template the turns are plain lines, `<user word>: text`, with the
assistant's text after `<assistant word>:` as the target (the words come from the language's prompt words).
"""

from __future__ import annotations

from typing import Any

from medtune.data.schema import IGNORE_INDEX, Record


def token_ids(tokenizer: Any, text: str) -> list[int]:
    """The ids of `text` without special tokens (the pieces of a prompt are joined by hand)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def bos_prefix(tokenizer: Any) -> list[int]:
    """[bos] when the tokenizer puts BOS in front of a text (Gemma, Llama), else []."""
    bos = tokenizer.bos_token_id
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [bos] if bos is not None and probe and probe[0] == bos else []


def _template_pieces(messages: list[dict[str, str]], tokenizer: Any) -> list[tuple[str, bool]]:
    """(text, is_assistant) pieces whose concatenation is the chat template's rendering, up to the last answer."""
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not head.startswith(done) or not full.startswith(head):
            raise ValueError(
                "the tokenizer's chat template does not render this conversation turn by turn (a turn's prompt is "
                "not a prefix of the conversation), so the assistant turns cannot be located; use a tokenizer "
                "whose template does, or the qa/instruction format."
            )
        pieces += [(head[len(done) :], False), (full[len(head) :], True)]
        done = full
    return pieces


def _plain_pieces(messages: list[dict[str, str]], words: dict[str, str]) -> list[tuple[str, bool]]:
    """Plain lines `<speaker>: text` (a system turn without a speaker); the assistant's text is the target."""
    pieces: list[tuple[str, bool]] = []
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            pieces += [(f"{words['assistant']}:", False), (f" {message['content']}", True)]
            if i + 1 < len(messages):
                pieces.append(("\n", False))
        elif message["role"] == "user":
            pieces.append((f"{words['user']}: {message['content']}\n", False))
        else:  # a system turn: its text on its own line, in no speaker's name
            pieces.append((f"{message['content']}\n", False))
    return pieces


def encode_chat(record: Record, tokenizer: Any, words: dict[str, str], loss_on: str) -> dict:
    """Token ids and labels of a conversation: labels on the assistant turns (and the final EOS) only."""
    messages = [{"role": role, "content": content} for role, content in record.messages]
    if getattr(tokenizer, "chat_template", None):
        pieces = _template_pieces(messages, tokenizer)
    else:
        pieces = _plain_pieces(messages, words)
    input_ids: list[int] = []
    labels: list[int] = []
    for text, is_answer in pieces:
        ids = token_ids(tokenizer, text)
        input_ids += ids
        labels += ids if is_answer or loss_on == "all" else [IGNORE_INDEX] * len(ids)
    bos = bos_prefix(tokenizer)
    if bos and input_ids[:1] != bos:  # a chat template may already spell out <bos>: never add a second one
        input_ids, labels = bos + input_ids, (bos if loss_on == "all" else [IGNORE_INDEX]) + labels
    if input_ids[-1:] != [tokenizer.eos_token_id]:
        input_ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    return {"input_ids": input_ids, "labels": labels, "id": record.id, "language": record.language}
