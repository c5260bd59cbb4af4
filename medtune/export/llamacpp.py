"""A GGUF run in llama.cpp itself, as an lm-eval model: the export gate's answers from llama.cpp's own kernels.

    lm = LlamaCppLM(Path("model-q8_0.gguf"))      # needs the optional binding: pip install 'medtune[llamacpp]'
    rows = gate.answers(lm, None, probes)         # the same eval scorer, the same requests as for torch models

The binding is llama-cpp-cffi (a prebuilt manylinux wheel with llama.cpp's CPU library; its C API is used
directly, nothing is downloaded). `binding()` says why it cannot be used, when it cannot: then the gate judges the
GGUF by medtune's own reading of its (dequantised) weights only, and says so. lm-eval builds the requests (context,
continuation) exactly as for the torch models; the context is tokenised by llama.cpp from the GGUF's own tokenizer.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from lm_eval.api.model import LM
from tqdm.auto import tqdm

log = logging.getLogger(__name__)
CONTEXT_TOKENS = 8192  # the longest prompt (few-shot included) it scores; longer ones are cut from the left


def binding() -> tuple[Any, Any, str]:
    """(lib, ffi, '') of the llama.cpp binding, or (None, None, why it cannot be used)."""
    os.environ.setdefault("LLAMA_CPP_BACKEND", "cpu")  # the gate compares on the CPU; no GPU probing
    try:
        from llama.llama_cpp import ffi, lib
    except ImportError as err:  # not installed, or its library does not load here (e.g. an older libstdc++)
        return None, None, f"llama-cpp-cffi is not usable here ({err})"
    return lib, ffi, ""


class LlamaCppLM(LM):
    """lm-eval's loglikelihood requests answered by llama.cpp on one GGUF (CPU, float32 logits)."""

    def __init__(self, gguf: Path, threads: int | None = None) -> None:
        super().__init__()
        self.lib, self.ffi, why = binding()
        if why:
            raise RuntimeError(why)
        lib = self.lib
        lib.llama_backend_init()
        self.model = lib.llama_model_load_from_file(str(gguf).encode(), lib.llama_model_default_params())
        if self.model == self.ffi.NULL:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        self.vocab = lib.llama_model_get_vocab(self.model)
        self.n_vocab = lib.llama_vocab_n_tokens(self.vocab)
        params = lib.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = CONTEXT_TOKENS
        params.n_threads = params.n_threads_batch = threads or max(1, os.cpu_count() or 1)
        self.ctx = lib.llama_init_from_model(self.model, params)
        if self.ctx == self.ffi.NULL:
            raise RuntimeError(f"llama.cpp could not make a context for {gguf}")
        self._last: dict[tuple[int, ...], np.ndarray] = {}  # context tokens -> log-probs after them

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        """llama.cpp's tokenisation of text with the GGUF's tokenizer."""
        raw = text.encode("utf-8")
        size = len(raw) + 8
        buf = self.ffi.new("llama_token[]", size)
        n = self.lib.llama_tokenize(self.vocab, raw, len(raw), buf, size, add_bos, False)
        if n < 0:
            size = -n
            buf = self.ffi.new("llama_token[]", size)
            n = self.lib.llama_tokenize(self.vocab, raw, len(raw), buf, size, add_bos, False)
        return [int(buf[i]) for i in range(n)]

    def logprobs(self, ids: list[int], first: int) -> np.ndarray:
        """Log-probabilities [len(ids) - first, vocab] of the next token after each position >= first."""
        lib = self.lib
        lib.llama_kv_self_clear(self.ctx)
        batch = lib.llama_batch_init(len(ids), 0, 1)
        try:
            for i, token in enumerate(ids):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = i >= first
            batch.n_tokens = len(ids)
            if lib.llama_decode(self.ctx, batch) != 0:
                raise RuntimeError(f"llama.cpp failed to decode {len(ids)} tokens")
            rows = [
                np.frombuffer(self.ffi.buffer(lib.llama_get_logits_ith(self.ctx, i), 4 * self.n_vocab), np.float32)
                for i in range(first, len(ids))
            ]
        finally:
            lib.llama_batch_free(batch)
        logits = np.stack(rows).astype(np.float64)
        top = logits.max(axis=-1, keepdims=True)
        return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))

    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation tokens the way lm-eval's HF model splits them (trailing spaces move over)."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tokenize(context + continuation, add_bos=True)
        n_context = len(self.tokenize(context, add_bos=True))
        return whole[:n_context], whole[n_context:]

    def _one(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        ids = (context + continuation)[-(CONTEXT_TOKENS + 1) :][:-1]
        first = len(ids) - len(continuation)
        if len(continuation) == 1 and tuple(context) in self._last:  # letters share their context: decode it once
            logp = self._last[tuple(context)][None]
        else:
            logp = self.logprobs(ids, first)
            if len(continuation) == 1:
                self._last = {tuple(context): logp[-1]}
        picked = logp[np.arange(len(continuation)), continuation]
        return float(picked.sum()), bool((logp.argmax(-1) == np.array(continuation)).all())

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log p(continuation | context), greedy) per request, as lm-eval's models answer them."""
        out = []
        for request in tqdm(requests, disable=disable_tqdm, desc="llama.cpp: scoring"):
            out.append(self._one(*self._pair(*request.args)))
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Not used by multiple-choice tasks."""
        raise NotImplementedError("the export gate scores multiple-choice questions only")

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Not used by multiple-choice tasks."""
        raise NotImplementedError("the export gate scores multiple-choice questions only")

    def close(self) -> None:
        """Free llama.cpp's context and model."""
        self.lib.llama_free(self.ctx)
        self.lib.llama_model_free(self.model)
