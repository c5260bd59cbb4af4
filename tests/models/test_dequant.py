"""models.dequant: bitsandbytes' 4-bit kernels called directly give bitsandbytes' own dequantisation, bit for bit
(CUDA, -m gpu); elsewhere, or when the direct call fails its one-time check, it is bitsandbytes' function."""

from __future__ import annotations

import logging

import pytest
import torch

from medtune.models import dequant


def _quantized(
    device: str, nested: bool, shape: tuple[int, int] = (384, 256), dtype: torch.dtype = torch.bfloat16
) -> tuple[torch.Tensor, object]:
    import bitsandbytes.functional as bnb_functional

    torch.manual_seed(0)
    dense = torch.randn(shape, dtype=dtype, device=device)
    return bnb_functional.quantize_4bit(dense, blocksize=64, compress_statistics=nested, quant_type="nf4")


def test_on_the_cpu_it_is_bitsandbytes_function(monkeypatch: pytest.MonkeyPatch) -> None:
    import bitsandbytes.functional as bnb_functional

    monkeypatch.setattr(dequant, "_direct", lambda *a: pytest.fail("no direct call on the CPU"))
    packed, state = _quantized("cpu", nested=True)
    got = dequant.dequantize(packed, state, torch.bfloat16)
    assert got.shape == (384, 256) and got.dtype == torch.bfloat16
    assert torch.equal(got, bnb_functional.dequantize_4bit(packed, state).to(torch.bfloat16))


@pytest.mark.parametrize("failure", ["raises", "differs"])
def test_a_direct_call_that_fails_its_check_is_never_used(
    failure: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The check (on CUDA, once per device, dtype, quant type and nesting) falls back with a warning that says why."""
    import bitsandbytes.functional as bnb_functional

    packed, state = _quantized("cpu", nested=False)
    want = bnb_functional.dequantize_4bit(packed, state).to(torch.bfloat16)
    calls = []

    def direct(*_: object) -> torch.Tensor:
        calls.append(1)
        if failure == "raises":
            raise AttributeError("undefined symbol: cdequantize_blockwise_bf16_nf4")
        return want + 1

    monkeypatch.setattr(dequant, "_direct", direct)
    monkeypatch.setattr(dequant, "_CHECKED", {})
    with caplog.at_level(logging.WARNING, logger="medtune.models.dequant"):
        assert dequant._check(packed, state, torch.bfloat16) is False
    assert calls == [1] and (
        "undefined symbol" in caplog.text if failure == "raises" else "another result" in caplog.text
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_direct_kernels_equal_bitsandbytes_on_cuda(nested: bool, dtype: torch.dtype) -> None:
    import bitsandbytes.functional as bnb_functional

    dequant._CHECKED.clear()
    packed, state = _quantized("cuda", nested, shape=(10240, 2560), dtype=dtype)  # Gemma 3 4B's gate projection
    got = dequant.dequantize(packed, state, dtype)
    assert {(packed.device.index, dtype, "nf4", nested): True} == dequant._CHECKED  # the direct call was taken
    assert torch.equal(got, bnb_functional.dequantize_4bit(packed, state))
    other = torch.float16 if dtype == torch.bfloat16 else torch.bfloat16  # not its compute dtype: bitsandbytes' way
    assert torch.equal(
        dequant.dequantize(packed, state, other), bnb_functional.dequantize_4bit(packed, state).to(other)
    )
    assert len(dequant._CHECKED) == 1
