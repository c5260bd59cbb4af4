"""Prompts and label masking, with tokenizers trained in-process on the sample questions (no downloads)."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from medtune.config import DataConfig
from medtune.data import IGNORE_INDEX, encode_example, format_prompt, render_mcq_prompt
from medtune.data.prepare import read_source
from medtune.data.schema import mcq, open_qa
from medtune.data.sources.registry import SOURCES

CFG = DataConfig(data_dir="/nonexistent", cache_dir="/nonexistent")
GEMMA_LIKE_CHAT = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def sample_records() -> list:
    return [r for lang in ("ko", "en") for rs in read_source(SOURCES[f"sample_{lang}"], CFG)[0].values() for r in rs]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE (Llama-style: BOS added by the post-processor) trained on the sample questions."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<bos>", "<eos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    texts = [" ".join(format_prompt(r)) for r in sample_records()]
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


KO = mcq("sample_ko", "test", "1", "ko", "law", "의료인이 아닌 사람은?", ["의사", "약사", "간호사"], 1)
EN = mcq("sample_en", "test", "2", "en", "lab", "Normal serum sodium?", ["120", "140", "160", "180"], 1)


def test_korean_and_english_wording_and_targets() -> None:
    prompt, target = format_prompt(KO)
    assert prompt == "질문: 의료인이 아닌 사람은?\nA. 의사\nB. 약사\nC. 간호사\n정답:" and target == " B. 약사"
    prompt, target = format_prompt(EN, answer_format="letter")
    assert prompt.startswith("Question: Normal serum sodium?\nA. 120\n") and prompt.endswith("D. 180\nAnswer:")
    assert target == " B"
    assert format_prompt(KO, language="en")[0].startswith("Question: 의료인이")


def test_context_open_qa_and_chat_body() -> None:
    pubmed = mcq("pubmedqa", "test", "3", "en", "r", "Does it work?", ["yes", "no", "maybe"], 0, context="Abstract.")
    assert format_prompt(pubmed)[0].startswith("Abstract.\n\nQuestion: Does it work?\nA. yes")
    dialogue = open_qa("genmedgpt_ko", "train", "1", "ko", "dialogue", "기침이 나요.", "진찰이 필요합니다.")
    assert format_prompt(dialogue) == ("질문: 기침이 나요.\n답변:", " 진찰이 필요합니다.")
    body, target = format_prompt(EN, template="chat")
    assert body.endswith("Answer with the letter of the correct option.") and target == "B. 140"
    assert render_mcq_prompt(KO) == format_prompt(KO)[0]
    with pytest.raises(ValueError, match="mcq"):
        render_mcq_prompt(dialogue)


@pytest.mark.parametrize("answer_format", ["letter", "letter_text"])
def test_unmasked_tokens_are_exactly_the_answer_and_eos(tokenizer, answer_format: str) -> None:
    cfg = DataConfig(data_dir="x", cache_dir="x", answer_format=answer_format)
    for record in [*sample_records()[::7], KO, EN]:
        example = encode_example(record, tokenizer, cfg)
        ids, labels = example["input_ids"], example["labels"]
        assert len(ids) == len(labels) and example["id"] == record.id and example["language"] == record.language
        unmasked = [i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
        assert unmasked[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(unmasked[:-1]) == format_prompt(record, answer_format=answer_format)[1]
        assert labels[: len(ids) - len(unmasked)] == [IGNORE_INDEX] * (len(ids) - len(unmasked))
        assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id


def test_loss_on_all_labels_every_token(tokenizer) -> None:
    cfg = DataConfig(data_dir="x", cache_dir="x", loss_on="all")
    example = encode_example(EN, tokenizer, cfg)
    assert example["labels"] == example["input_ids"]


def test_chat_template_single_bos_and_assistant_turn_as_target(tokenizer) -> None:
    tokenizer.chat_template = GEMMA_LIKE_CHAT
    try:
        example = encode_example(KO, tokenizer, CFG, chat_template=True)
    finally:
        tokenizer.chat_template = None
    ids, labels = example["input_ids"], example["labels"]
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id  # template's bos, not two
    unmasked = [i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
    assert tokenizer.decode(unmasked[:-1]) == "B. 약사<end_of_turn>\n" and unmasked[-1] == tokenizer.eos_token_id
    prompt = tokenizer.decode(ids[: len(ids) - len(unmasked)])
    assert prompt.startswith("<bos><start_of_turn>user\n질문:") and prompt.endswith("<start_of_turn>model\n")


def test_chat_requested_without_template_falls_back_to_plain(tokenizer) -> None:
    plain = encode_example(EN, tokenizer, CFG)
    assert encode_example(EN, tokenizer, CFG, chat_template=True) == plain


def test_tokenizer_without_eos_is_refused(tokenizer) -> None:
    class NoEos:
        eos_token_id = None

    with pytest.raises(ValueError, match="eos_token"):
        encode_example(EN, NoEos(), CFG)


@pytest.mark.slow
def test_real_gemma_tokenizer_single_bos_and_exact_answer() -> None:
    """The converted Gemma 3 tokenizer (python -m medtune.train converts it once into the cache)."""
    import os
    from pathlib import Path

    from transformers import AutoTokenizer

    cache = Path(os.environ.get("MEDTUNE_CACHE_DIR", Path.home() / ".cache" / "medtune")) / "models" / "gemma3_270m"
    if not (cache / "tokenizer.json").is_file():
        pytest.skip(f"no converted Gemma tokenizer in {cache}")
    tok = AutoTokenizer.from_pretrained(str(cache))
    tok.chat_template = tok.chat_template or GEMMA_LIKE_CHAT
    for chat, tail in ((False, " B. 약사"), (True, "B. 약사<end_of_turn>\n")):
        example = encode_example(KO, tok, CFG, chat_template=chat)
        ids, labels = example["input_ids"], example["labels"]
        unmasked = [i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
        assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
        assert tok.decode(unmasked[:-1]) == tail and unmasked[-1] == tok.eos_token_id
