"""The Triton cross-entropy kernel gives what torch's ops give: loss, in-place gradient, through chunked_cross_entropy.

On the CPU the kernel runs under Triton's interpreter (TRITON_INTERPRET=1, triton from `make install`); the GPU test
(`-m gpu`) runs it compiled at Gemma 3's vocabulary size.
"""

from __future__ import annotations

import pytest
import torch

from medtune.config import ConfigError
from medtune.training import ce_kernel
from medtune.training.chunked_loss import chunked_cross_entropy


@pytest.fixture
def interpreted() -> None:
    """Triton installed; without CUDA, tests/conftest.py has set TRITON_INTERPRET=1 before anything imported it."""
    pytest.importorskip("triton")


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _reference(logits: torch.Tensor, target: torch.Tensor, softcap: float | None):
    x = logits.double().requires_grad_()
    z = x if softcap is None else softcap * torch.tanh(x / softcap)
    loss = torch.nn.functional.cross_entropy(z, target, reduction="sum")
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("softcap", [None, 4.0])
@pytest.mark.parametrize("vocab", [37, 8192 + 301])  # one partial block; a full block then a partial one
def test_loss_and_in_place_gradient_equal_torch(interpreted, dtype, softcap, vocab) -> None:
    gen = torch.Generator().manual_seed(vocab)
    logits = (torch.randn(5, vocab, generator=gen) * 6).to(dtype).to(_device())
    target = torch.randint(0, vocab, (5,), generator=gen).to(_device())
    target[0] = vocab - 1  # the last column, in the partial block
    ref_loss, ref_grad = _reference(logits, target, softcap)
    loss = ce_kernel.loss_and_grad_(logits, target, softcap)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-5)
    # the gradient is written in the logits' dtype: off by at most its rounding
    tol = 1e-6 if dtype == torch.float32 else 2**-8
    torch.testing.assert_close(logits.double(), ref_grad, rtol=0, atol=tol)


def test_without_gradient_the_logits_stay(interpreted) -> None:
    logits = torch.randn(3, 50, device=_device())
    before = logits.clone()
    target = torch.tensor([0, 49, 7], device=_device())
    loss = ce_kernel.loss_and_grad_(logits, target, None, write_grad=False)
    torch.testing.assert_close(loss.double(), _reference(before, target, None)[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(logits, before)


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_chunked_loss_with_the_kernel_equals_torch_ops(interpreted, softcap) -> None:
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(23, 16, generator=gen).to(_device())
    weight = torch.randn(300, 16, generator=gen).to(_device())
    labels = torch.randint(0, 300, (23,), generator=gen).to(_device())
    labels[3:9] = -100
    grads = {}
    for kernel in ("torch", "triton"):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        loss, n = chunked_cross_entropy(h, w, labels, 5, softcap, kernel)  # 17 label tokens: chunks of 5, 5, 5, 2
        (loss * 0.37).backward()
        grads[kernel] = (loss.detach(), int(n), h.grad, w.grad)
    for got, want in zip(grads["triton"], grads["torch"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_kernel_choice_is_resolved_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cpu = torch.device("cpu")
    assert ce_kernel.resolve("auto", cpu) == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert ce_kernel.resolve("auto", cpu) == "torch"  # the interpreter only when asked for by name
    monkeypatch.delenv("TRITON_INTERPRET")
    assert ce_kernel.resolve("torch", torch.device("cuda")) == "torch"
    with pytest.raises(RuntimeError, match=r"trainer\.loss_kernel=triton needs a CUDA device"):
        ce_kernel.resolve("triton", cpu)
    with pytest.raises(ConfigError, match=r"trainer\.loss_kernel='fast' is not one of"):
        ce_kernel.resolve("fast", cpu)
    monkeypatch.setattr(ce_kernel, "triton_available", lambda: False)
    assert ce_kernel.resolve("auto", torch.device("cuda")) == "torch"  # no triton: torch's ops, no error


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_at_gemma3_vocabulary_size(interpreted) -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(1500, 640, device="cuda", generator=gen, dtype=torch.bfloat16)
    weight = (torch.randn(262_144, 640, device="cuda", generator=gen) * 0.05).to(torch.bfloat16)
    labels = torch.randint(0, 262_144, (1500,), device="cuda", generator=gen)
    out = {}
    for kernel in ("torch", "triton"):
        h = hidden.clone().requires_grad_()
        loss, _ = chunked_cross_entropy(h, weight, labels, 1024, None, kernel)
        loss.backward()
        out[kernel] = (loss.detach(), h.grad.float())
    torch.testing.assert_close(out["triton"][0], out["torch"][0], rtol=1e-5, atol=0)
    err = (out["triton"][1] - out["torch"][1]).abs().max() / out["torch"][1].abs().max()
    print(f"bf16 hidden gradient, kernel vs torch ops: max error {err:.2e} of the largest entry")
    assert err < 1e-2
