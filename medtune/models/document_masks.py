"""Per-document attention for packed rows, on every layer type, through transformers' prepared-mask inputs.

Why not just restart `position_ids`: transformers 5.24 detects packing from restarting positions only when no
`attention_mask` is passed *and* no cache exists; with `use_cache` left at its default (a cache is made), or with an
all-ones 2D mask, packed samples silently attend to each other (test_document_masks.py shows it). A single 4D
block mask is not enough either: Gemma 3 builds a separate mask for its sliding-window layers.

What this module does instead: from a batch's `document_ids` (medtune/data/packing.py) it builds one mask per layer type
the model has (`full_attention`, `sliding_attention` with the config's window) in the format of the attention
implementation, and passes them as `attention_mask` -- a tensor / BlockMask for single-type models (Llama), a
`{layer_type: mask}` dict for mixed models (Gemma 3). transformers uses a prepared 4D mask or BlockMask as given,
and mixed-layer models accept the per-type dict (the form `generate` prepares), so no model code is touched.

| implementation | mask passed                                   | cost                                      |
|----------------|-----------------------------------------------|-------------------------------------------|
| flex_attention | BlockMask from a document mask_mod            | skips blocks across documents; compiled on CUDA |
| sdpa           | boolean [rows, 1, seq, seq]                   | dense mask, no flash kernel               |
| eager          | additive float [rows, 1, seq, seq]            | dense, reference                          |
| flash_attention_2 | no mask; `cu_seq_lens_*`/`max_length_*` (varlen) | needs the flash_attn package, fp16/bf16 |
| medtune_varlen | no mask; `cu_seq_lens_*`, bucketed `max_length_*` | torch's FlashAttention-2 (varlen_attention) |

Run the proof: `python -m pytest -q tests/models/test_document_masks.py`.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from medtune.config import PackingConfig
from medtune.models import varlen_attention
from medtune.models.anatomy import head_dim_of, peft_base_of

log = logging.getLogger(__name__)

IMPLEMENTATIONS = {
    "flex": "flex_attention",
    "sdpa": "sdpa",
    "eager": "eager",
    "flash": "flash_attention_2",
    "varlen": varlen_attention.NAME,
}
_PACKED_ONLY = ("flex_attention", varlen_attention.NAME)  # kernels evaluation swaps for sdpa on padded batches
_MARK = "_medtune_document_masking"  # attribute set on the transformers model by enable_document_masking
LayerWindows = dict[str, int | None]  # layer type -> sliding window (None: full causal)


def flash_attn_available() -> bool:
    """Whether the flash_attn package (varlen kernels) is importable."""
    return importlib.util.find_spec("flash_attn") is not None


def resolve_attention(choice: str, device: torch.device, dtype: torch.dtype, head_dim: int | None = None) -> str:
    """The transformers attn_implementation for packing.attention.

    auto: on CUDA with fp16/bf16 weights the flash_attn package if installed, else torch's built-in flash varlen
    kernel (sm80+, checked once with a probe of `head_dim`), else flex; sdpa on a CPU. `varlen` on a CPU runs its
    dense reference (for tests).
    """
    if choice == "auto":
        half = dtype in (torch.float16, torch.bfloat16)
        if device.type == "cuda" and half and flash_attn_available():
            return "flash_attention_2"
        if varlen_attention.flash_varlen_available(device, dtype, head_dim):
            return varlen_attention.register()
        return "flex_attention" if device.type == "cuda" else "sdpa"
    if choice == "varlen":
        if device.type == "cuda" and not varlen_attention.flash_varlen_available(device, dtype, head_dim):
            raise ValueError(
                f"packing.attention=varlen needs fp16/bf16 weights on an sm80+ GPU whose flash kernel runs heads of "
                f"{head_dim} (got {dtype} on {device}; see the warning above); set model.dtype=bfloat16 or "
                "packing.attention=flex."
            )
        return varlen_attention.register()
    if choice not in IMPLEMENTATIONS:
        raise ValueError(f"packing.attention={choice!r} is not one of {['auto', *IMPLEMENTATIONS]}.")
    if choice == "flash" and not flash_attn_available():
        raise ValueError(
            "packing.attention=flash needs the flash_attn package, which is not installed; "
            "install flash-attn on the GPU machine or set packing.attention=flex (or auto)."
        )
    return IMPLEMENTATIONS[choice]


def layer_windows(config: Any) -> LayerWindows:
    """Each attention layer type of a transformers config and its sliding window; refuses types it cannot mask."""
    if hasattr(config, "get_text_config"):  # multimodal configs (MedGemma 4B) keep layer types on the text config
        config = config.get_text_config()
    types = set(getattr(config, "layer_types", None) or [])
    if not types:  # older single-type configs; Mistral-style configs slide on every layer
        window = getattr(config, "sliding_window", None)
        types = {"sliding_attention" if window else "full_attention"}
    unknown = types - {"full_attention", "sliding_attention"}
    if unknown:
        raise NotImplementedError(
            f"{type(config).__name__} has layer types {sorted(unknown)}; medtune's document masks cover only "
            "full_attention and sliding_attention layers. Use packing=none or pad_to_max for this model."
        )
    windows: LayerWindows = {"full_attention": None} if "full_attention" in types else {}
    if "sliding_attention" in types:
        window = getattr(config, "sliding_window", None)
        if not window:
            raise ValueError(f"{type(config).__name__} has sliding_attention layers but no sliding_window.")
        windows["sliding_attention"] = int(window)
    return windows


@contextmanager
def unpacked_attention(model: torch.nn.Module) -> Iterator[str]:
    """Within the block the model runs plain padded batches (evaluation): a packing-only kernel is swapped for sdpa.

    flex_attention is what packed training needs, but on padded batches of every length (lm-eval) transformers
    compiles it per shape, and torch 2.11's inductor fails on those dynamic shapes (NoValidChoicesError, H100);
    medtune_varlen needs the packed batch's sequence bounds. sdpa computes the same attention for one document per
    row; the packing kernel is restored afterwards.
    """
    base = peft_base_of(model)
    before = base.config._attn_implementation
    if before not in _PACKED_ONLY:
        yield before
        return
    base.set_attn_implementation("sdpa")
    log.info("evaluation: attention %s -> sdpa (padded batches), restored afterwards", before)
    try:
        yield "sdpa"
    finally:
        base.set_attn_implementation(before)


def enable_document_masking(model: torch.nn.Module, cfg: PackingConfig) -> str:
    """Switch the model to the attention kernel that will isolate packed documents; returns its name."""
    base = peft_base_of(model)
    if cfg.mode != "packed":  # one sample per row, right-padded: the plain causal mask is already exact
        return base.config._attn_implementation
    param = next(base.parameters())
    impl = resolve_attention(cfg.attention, param.device, param.dtype, head_dim_of(base.config))
    layer_windows(base.config)  # fail now, not at the first step, on an unsupported architecture
    if base.config._attn_implementation != impl:
        base.set_attn_implementation(impl)
    setattr(base, _MARK, impl)
    log.info("packing: per-document attention with %s", impl)
    return impl


def _document_mask_mod(document_ids: torch.Tensor, window: int) -> Callable:
    """flex mask_mod: same document, causal, and less than `window` tokens back (transformers' sliding rule)."""

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return (document_ids[b, q] == document_ids[b, kv]) & (kv <= q) & (q - kv < window)

    return mask_mod


def dense_document_mask(document_ids: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean [rows, 1, seq, seq] mask, True where query (dim 2) may attend to key (dim 3)."""
    seq_len = document_ids.shape[-1]
    idx = torch.arange(seq_len, device=document_ids.device)
    allowed = idx[None, :] <= idx[:, None]
    if window is not None:
        allowed = allowed & (idx[:, None] - idx[None, :] < window)
    same_doc = document_ids[:, :, None] == document_ids[:, None, :]
    return (same_doc & allowed)[:, None]


def _build_mask(impl: str, document_ids: torch.Tensor, window: int | None, dtype: torch.dtype) -> Any:
    """One layer type's mask in the format the implementation expects."""
    if impl == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        rows, seq_len = document_ids.shape
        compile_mask = document_ids.device.type == "cuda"  # the uncompiled path materialises rows x seq x seq
        # full attention is a window of the whole row: one mask_mod code path. The window stays a Python int: a
        # 0-d tensor in the closure hit an inductor C++ codegen error for flex on CPU (torch 2.13)
        mod = _document_mask_mod(document_ids, window or seq_len)
        return create_block_mask(mod, rows, None, seq_len, seq_len, device=document_ids.device, _compile=compile_mask)
    allowed = dense_document_mask(document_ids, window)
    if impl == "sdpa":
        return allowed
    if impl == "eager":  # eager adds the mask to the scores
        zero = torch.zeros((), dtype=dtype, device=allowed.device)
        return torch.where(allowed, zero, torch.finfo(dtype).min)
    raise ValueError(f"no document mask for attn_implementation={impl!r}; call enable_document_masking first.")


def flash_varlen_kwargs(document_ids: torch.Tensor, device: torch.device | None = None,
                        bucket: bool = False) -> dict[str, Any]:  # fmt: skip
    """cu_seq_lens_q/k and max_length_q/k over the flattened rows; each document and pad tail is one sequence.

    Computed where `document_ids` lives (the CPU batch: no device sync), then moved to `device`. bucket: round the
    max length up (varlen_attention.bucket_max_len) so a compiled model sees a few values, not one per batch.
    """
    flat = document_ids.reshape(-1)
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat[1:] != flat[:-1]
    starts[:: document_ids.shape[-1]] = True  # every row starts a sequence, even when ids repeat across rows
    bounds = torch.nonzero(starts).flatten()
    cu = torch.cat([bounds, bounds.new_tensor([flat.numel()])]).to(torch.int32)
    max_len = int((cu[1:] - cu[:-1]).max())
    if bucket:
        max_len = varlen_attention.bucket_max_len(max_len, document_ids.shape[-1])
    cu = cu.to(device, non_blocking=True) if device is not None else cu
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max_len, "max_length_k": max_len}


def model_inputs(batch: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, Any]:
    """Keyword arguments for `model(**...)` (logits) or the base `model.model(**...)` (hidden states)."""
    base = peft_base_of(model)
    device = next(base.parameters()).device
    inputs: dict[str, Any] = {
        "input_ids": batch["input_ids"].to(device, non_blocking=True),
        "position_ids": batch["position_ids"].to(device, non_blocking=True),
        "use_cache": False,  # a cache turns off transformers' own packed-sequence handling and wastes memory
    }
    document_ids = batch["document_ids"]
    if int(document_ids.max()) < 1:  # one document per row, padding after it: causal alone is exact
        return inputs
    impl = getattr(base, _MARK, None)
    if impl is None or impl != base.config._attn_implementation:
        raise RuntimeError(
            "this batch packs several documents per row but the model is not set up to isolate them; "
            "call medtune.models.document_masks.enable_document_masking(model, cfg.packing) after building the model."
        )
    if impl in ("flash_attention_2", varlen_attention.NAME):
        inputs.update(flash_varlen_kwargs(document_ids, device, bucket=impl == varlen_attention.NAME))
        return inputs
    document_ids = document_ids.to(device, non_blocking=True)
    dtype = base.get_input_embeddings().weight.dtype
    windows = layer_windows(base.config)
    masks = {kind: _build_mask(impl, document_ids, window, dtype) for kind, window in windows.items()}
    # single-type models take the mask itself; mixed ones the per-type dict their forward reads
    inputs["attention_mask"] = next(iter(masks.values())) if len(masks) == 1 else masks
    return inputs
