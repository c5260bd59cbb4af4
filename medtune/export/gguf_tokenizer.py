"""A Hugging Face fast tokenizer as GGUF tokenizer metadata (`tokenizer.ggml.*`), in the form llama.cpp reads.

Two families are written, told apart by the tokenizer's own `tokenizer.json`:

    byte-level BPE (Llama 3, medtune's byte tokenizer)   -> tokenizer.ggml.model "gpt2": tokens, types, merges, pre
    sentencepiece-style BPE, byte fallback (Gemma 3)      -> tokenizer.ggml.model "llama": tokens, types, scores

Anything else is refused: a runtime that splits text differently from training does not serve the trained model.
Special ids, add-BOS/EOS flags, merges and the chat template come from `gguf.SpecialVocab`. The token list is
written here because the package's vocab classes do not fit: `BpeVocab` marks special tokens that sit inside the
BPE vocabulary as normal, and `LlamaHfVocab` gives every token the same placeholder score, which would leave
llama.cpp's sentencepiece merges without an order.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

PLACEHOLDER = "<medtune_unused_{}>"  # fills ids the tokenizer never produces, up to the model's vocab_size
CONTROL_SCORE = -1000.0  # the score llama.cpp's own conversions give control and user-defined tokens
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


class TokenizerExportError(ValueError):
    """The tokenizer cannot be written as a GGUF tokenizer that llama.cpp would split text with the same way."""


@dataclass
class GGUFTokenizer:
    """What goes into the GGUF's tokenizer.ggml.* keys."""

    model: str  # "gpt2" | "llama"
    pre: str
    tokens: list[str]
    types: list[int]
    scores: list[float] = field(default_factory=list)
    add_space_prefix: bool = False


def _walk(node: Any) -> list[dict]:
    """Every component of a normalizer / pre-tokenizer / decoder spec, Sequences flattened."""
    if not isinstance(node, dict):
        return []
    parts = [node]
    for child in node.get("normalizers", []) + node.get("pretokenizers", []) + node.get("decoders", []):
        parts += _walk(child)
    return parts


def _types_of(spec: dict) -> set[str]:
    return {part.get("type") for key in ("normalizer", "pre_tokenizer", "decoder") for part in _walk(spec.get(key))}


def _byte_level_pre(spec: dict) -> str:
    """llama.cpp's pre-tokenizer name for the text split a byte-level tokenizer applies before BPE."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    parts = _walk(spec.get("pre_tokenizer"))
    splits = [p for p in parts if p.get("type") == "Split"]
    byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
    if not splits and len(byte_level) == 1 and byte_level[0].get("use_regex", True):
        return "gpt2"  # ByteLevel's own regex is GPT-2's
    if len(splits) == 1 and byte_level and not byte_level[0].get("use_regex", True):
        regex = splits[0].get("pattern", {}).get("Regex")
        # transformers' reader turns a pre name back into its regex: the same table read the other way round
        names = [name for name, pattern in GGUF_PRE_TOKENIZER_SPLITS.items() if pattern == regex]
        if names:
            return "llama-bpe" if "llama-bpe" in names else names[0]
    raise TokenizerExportError(
        "the tokenizer's pre-tokenizer (its text split before BPE) is not one llama.cpp names; a GGUF of it would "
        f"split text differently from training: {json.dumps(spec.get('pre_tokenizer'))[:200]}"
    )


def _family(spec: dict) -> str:
    model = spec.get("model", {})
    kinds = _types_of(spec)
    if model.get("type") == "BPE" and "ByteLevel" in kinds and not model.get("byte_fallback"):
        return "gpt2"
    if model.get("type") == "BPE" and model.get("byte_fallback") and "Replace" in kinds:
        return "llama"
    raise TokenizerExportError(
        f"tokenizer model {model.get('type')!r} (byte_fallback={model.get('byte_fallback')}) with {sorted(kinds)} is "
        "neither byte-level BPE (Llama 3) nor sentencepiece-style BPE (Gemma); medtune cannot write it to GGUF."
    )


def _id_to_token(spec: dict, tokenizer: Any, vocab_size: int) -> list[str]:
    vocab = {i: t for t, i in spec["model"]["vocab"].items()}
    vocab |= {item["id"]: item["content"] for item in spec.get("added_tokens", [])}
    if len(tokenizer) > vocab_size or max(vocab) >= vocab_size:
        raise TokenizerExportError(
            f"the tokenizer has {len(tokenizer)} tokens (largest id {max(vocab)}) but the model's vocab_size is "
            f"{vocab_size}; the GGUF's token list must match the embedding rows."
        )
    return [vocab.get(i, PLACEHOLDER.format(i)) for i in range(vocab_size)]


def _token_types(spec: dict, tokens: list[str], family: str, unk_id: int | None) -> list[int]:
    added = {item["id"]: item["special"] for item in spec.get("added_tokens", [])}
    types = []
    for i, token in enumerate(tokens):
        if i in added:
            kind = gguf.TokenType.CONTROL if added[i] else gguf.TokenType.USER_DEFINED
        elif token == PLACEHOLDER.format(i):
            kind = gguf.TokenType.UNUSED
        elif family == "llama" and i == unk_id:
            kind = gguf.TokenType.UNKNOWN
        elif family == "llama" and BYTE_TOKEN.fullmatch(token):
            kind = gguf.TokenType.BYTE
        else:
            kind = gguf.TokenType.NORMAL
        types.append(int(kind))
    return types


def _spm_scores(types: list[int]) -> list[float]:
    """Merge priority for llama.cpp's sentencepiece tokenizer: earlier normal tokens merge first.

    Gemma's merges follow the order of its vocabulary (transformers rebuilds them that way from a GGUF, and the
    official Gemma 3 GGUF's normal-token scores fall strictly with the id), so -rank keeps that order.
    """
    scores, rank = [], 0
    for kind in types:
        if kind == gguf.TokenType.NORMAL:
            scores.append(-float(rank))
            rank += 1
        else:
            scores.append(0.0 if kind == gguf.TokenType.BYTE else CONTROL_SCORE)
    return scores


def tokenizer_fields(tokenizer: Any, vocab_size: int) -> GGUFTokenizer:
    """The GGUF token list, types and (sentencepiece) scores of a fast tokenizer, padded to vocab_size."""
    if not getattr(tokenizer, "is_fast", False):
        raise TokenizerExportError("a fast tokenizer (tokenizer.json) is needed to write the GGUF tokenizer.")
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    family = _family(spec)
    tokens = _id_to_token(spec, tokenizer, vocab_size)
    types = _token_types(spec, tokens, family, tokenizer.unk_token_id)
    if family == "gpt2":
        return GGUFTokenizer("gpt2", _byte_level_pre(spec), tokens, types)
    prefix = any(p.get("type") == "Prepend" for p in _walk(spec.get("normalizer")))
    return GGUFTokenizer("llama", "default", tokens, types, _spm_scores(types), add_space_prefix=prefix)


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer: Any, tokenizer_dir: Path, vocab_size: int) -> GGUFTokenizer:
    """Write the tokenizer (saved in tokenizer_dir) into the GGUF: tokens, types, scores or merges, specials."""
    fields = tokenizer_fields(tokenizer, vocab_size)
    writer.add_tokenizer_model(fields.model)
    writer.add_tokenizer_pre(fields.pre)
    writer.add_token_list(fields.tokens)
    writer.add_token_types(fields.types)
    if fields.scores:
        writer.add_token_scores(fields.scores)
        writer.add_add_space_prefix(fields.add_space_prefix)
    # Merges only for byte-level BPE: llama.cpp's sentencepiece tokenizer merges by score, and a GGUF carrying
    # merges would let transformers' reader use them instead, hiding what llama.cpp does.
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=fields.model == "gpt2", n_vocab=vocab_size)
    special.add_to_gguf(writer, quiet=True)
    return fields
