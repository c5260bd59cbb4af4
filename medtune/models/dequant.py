"""A frozen 4-bit weight back in bf16 / fp16 for a matmul, with little Python between the two CUDA kernels it takes.

bitsandbytes' `dequantize_4bit` runs the nested absmax kernel and the weight kernel behind two custom-op dispatches
with Python kernels and checks; a LoRA step on the Gemma 3 4B architecture dequantises 714 times (7 projections x 34
layers x forward, replay and backward), and at 4 rows of 2048 tokens the GPU waits for the CPU. `dequantize` calls
the same two kernels in bitsandbytes' own library directly, once a one-time check per process, dtype and quant type
has found their result equal, bit for bit, to `bitsandbytes.functional.dequantize_4bit`'s. Anywhere else (CPU, a
bitsandbytes whose library lacks these kernels, a failed check) it is bitsandbytes' own function.

    weight = dequantize(linear4bit.weight, linear4bit.weight.quant_state, torch.bfloat16)   # [out, in]
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)
_CHECKED: dict[tuple, bool] = {}  # (device index, dtype, quant type, nested) -> the direct call gave bnb's result
_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def _library() -> Any:
    from bitsandbytes.cextension import lib

    return lib


def _direct(weight: torch.Tensor, state: Any, dtype: torch.dtype) -> torch.Tensor:
    """The two kernels bitsandbytes' CUDA backend calls, called here (argument order of bitsandbytes 0.50)."""
    lib, device = _library(), weight.device
    stream = torch.cuda.current_stream(device).cuda_stream
    absmax = state.absmax
    if state.nested:
        nested, absmax = absmax, torch.empty(absmax.shape, dtype=torch.float32, device=device)
        inner = state.state2
        lib.cdequantize_blockwise_fp32(inner.code.data_ptr(), nested.data_ptr(), inner.absmax.data_ptr(),
                                       absmax.data_ptr(), inner.blocksize, nested.numel(), stream)  # fmt: skip
        absmax += state.offset
    out = torch.empty(tuple(state.shape), dtype=dtype, device=device)
    kernel = getattr(lib, f"cdequantize_blockwise_{_NAMES[dtype]}_{state.quant_type}")
    kernel(None, weight.data_ptr(), absmax.data_ptr(), out.data_ptr(), state.blocksize, out.numel(), stream)
    return out


def _usable(weight: torch.Tensor, state: Any, dtype: torch.dtype) -> bool:
    # in its own compute dtype only: bitsandbytes dequantises to state.dtype and then casts, which rounds twice
    if weight.device.type != "cuda" or dtype not in _NAMES or dtype != state.dtype or state.quant_type != "nf4":
        return False
    if weight.device.index != torch.cuda.current_device() or not weight.is_contiguous():
        return False
    key = (weight.device.index, dtype, state.quant_type, bool(state.nested))
    if key not in _CHECKED:
        _CHECKED[key] = _check(weight, state, dtype)
    return _CHECKED[key]


def _check(weight: torch.Tensor, state: Any, dtype: torch.dtype) -> bool:
    import bitsandbytes.functional as bnb_functional

    try:
        same = torch.equal(_direct(weight, state, dtype), bnb_functional.dequantize_4bit(weight, state).to(dtype))
    except Exception as err:  # another bitsandbytes' library: names or arguments differ
        log.warning("4-bit dequantisation through bitsandbytes' functions (the direct call failed: %s)", err)
        return False
    if not same:
        log.warning("4-bit dequantisation through bitsandbytes' functions (the direct call gave another result)")
    return same


def dequantize(weight: torch.Tensor, state: Any, dtype: torch.dtype) -> torch.Tensor:
    """The [out, in] weight of a bitsandbytes 4-bit parameter in `dtype`."""
    if _usable(weight, state, dtype):
        return _direct(weight, state, dtype)
    import bitsandbytes.functional as bnb_functional

    return bnb_functional.dequantize_4bit(weight, state).to(dtype)
