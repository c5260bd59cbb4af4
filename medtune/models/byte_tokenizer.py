"""A byte-level tokenizer built in-process, for models without a tokenizer of their own (tiny test models, random init).

Every UTF-8 byte is a token, so any text (Korean included) encodes without an unknown token, and the answer
letters " A" .. " J" (medtune.data.schema.LETTERS) are single tokens (one merge each), so letter scoring works as
on a real model:

    >>> tok = build_byte_tokenizer(vocab_size=512)
    >>> tok(" B", add_special_tokens=False).input_ids   # one id
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from medtune.data.schema import LETTERS

N_SPECIAL = 4  # ids 0..3 hold pad, bos, eos, unk (in the order the model config asks for)


def _special_ids(pad_id: int | None, bos_id: int | None, eos_id: int | None) -> dict[str, int]:
    """Use the model config's special ids when they fit in the reserved slots, else 0, 1, 2."""
    wanted = {"pad": pad_id, "bos": bos_id, "eos": eos_id}
    ids = list(wanted.values())
    if not all(isinstance(i, int) and 0 <= i < N_SPECIAL for i in ids) or len(set(ids)) != len(ids):
        wanted = {"pad": 0, "bos": 1, "eos": 2}
    unk = next(i for i in range(N_SPECIAL) if i not in wanted.values())
    return {**wanted, "unk": unk}


def build_byte_tokenizer(
    vocab_size: int, pad_id: int | None = 0, bos_id: int | None = 1, eos_id: int | None = 2
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of 4 special + 256 byte + one token per answer letter; <bos> before each text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    letter_tokens = ["Ġ" + letter for letter in LETTERS]  # "Ġ" is the byte-level spelling of a space
    needed = N_SPECIAL + len(byte_chars) + len(letter_tokens)
    if vocab_size < needed:
        raise ValueError(f"the byte tokenizer needs vocab_size >= {needed}; the model has {vocab_size}.")
    special = _special_ids(pad_id, bos_id, eos_id)
    vocab = {f"<{name}>": idx for name, idx in special.items()}
    for char in [*byte_chars, *letter_tokens]:
        vocab[char] = len(vocab)
    merges = [("Ġ", letter) for letter in LETTERS]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", special["bos"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="right",
    )
