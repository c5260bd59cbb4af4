"""Chat records: the loss mask covers exactly the assistant turns (and the final EOS), nothing of the prompt."""

from __future__ import annotations

import pytest

from medtune.config import DataConfig
from medtune.data import IGNORE_INDEX, encode_example
from medtune.data.schema import chat
from medtune.models.byte_tokenizer import build_byte_tokenizer

GEMMA_LIKE_CHAT = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
TURNS = [
    ("system", "丁寧に答えてください。"),
    ("user", "頭が痛いです。"),
    ("assistant", "いつからですか。"),
    ("user", "昨日からです。"),
    ("assistant", "熱があれば受診してください。"),
]
TALK = chat("talk", "train", "1", "ja", "s", TURNS)
CFG = DataConfig(data_dir="x", cache_dir="x")


@pytest.fixture
def tokenizer():
    """Every UTF-8 byte a token: a text and its pieces tokenize alike, so spans can be checked exactly."""
    return build_byte_tokenizer(vocab_size=512)


def labelled_runs(example: dict) -> list[list[int]]:
    """The maximal runs of positions that carry a label, as token ids (labels equal the inputs there)."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(example["input_ids"], example["labels"], strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = label != IGNORE_INDEX
    return runs


def test_template_labels_are_exactly_the_assistant_turns(tokenizer) -> None:
    tokenizer.chat_template = GEMMA_LIKE_CHAT
    example = encode_example(TALK, tokenizer, CFG)
    eos = tokenizer.eos_token_id
    runs = labelled_runs(example)
    assert [tokenizer.decode(run) for run in runs] == [
        "いつからですか。<end_of_turn>\n",
        "熱があれば受診してください。<end_of_turn>\n" + tokenizer.eos_token,
    ]
    assert runs[-1][-1] == eos and example["input_ids"][-1] == eos
    messages = [{"role": r, "content": c} for r, c in TURNS]
    whole = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(example["input_ids"]) == whole + tokenizer.eos_token  # one rendering, one <bos>
    masked = [t for t, lab in zip(example["input_ids"], example["labels"], strict=True) if lab == IGNORE_INDEX]
    prompt = tokenizer.decode(masked)
    assert "頭が痛いです。" in prompt and "昨日からです。" in prompt and "丁寧に" in prompt
    assert "いつから" not in prompt and "受診" not in prompt
    assert prompt.endswith("<start_of_turn>model\n") and prompt.count("<start_of_turn>model\n") == 2


def test_without_a_template_the_turns_are_plain_lines_in_the_language_words(tokenizer) -> None:
    cfg = DataConfig(data_dir="x", cache_dir="x", prompt_words={"ja": {"user": "患者", "assistant": "医師"}})
    example = encode_example(TALK, tokenizer, cfg)
    assert [tokenizer.decode(run) for run in labelled_runs(example)] == [
        " いつからですか。",
        " 熱があれば受診してください。" + tokenizer.eos_token,
    ]
    text = tokenizer.decode(example["input_ids"])
    assert text.startswith(tokenizer.bos_token + "丁寧に答えてください。\n患者: 頭が痛いです。\n医師: いつから")


def test_loss_on_all_labels_every_token(tokenizer) -> None:
    tokenizer.chat_template = GEMMA_LIKE_CHAT
    example = encode_example(TALK, tokenizer, DataConfig(data_dir="x", cache_dir="x", loss_on="all"))
    assert example["labels"] == example["input_ids"]


def test_a_template_that_rewrites_earlier_turns_is_refused(tokenizer) -> None:
    # a template that renders the last message differently from earlier ones: turns cannot be cut out of it
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] if loop.last else '-' }}{% endfor %}"
    with pytest.raises(ValueError, match="does not render this conversation turn by turn"):
        encode_example(TALK, tokenizer, CFG)
