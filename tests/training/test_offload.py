"""Offloaded activations: the forward's large saved tensors go to pinned CPU memory and come back bit for bit."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from medtune.models.lora import set_gradient_checkpointing
from medtune.training.offload import ActivationOffloader


def test_on_a_cpu_nothing_is_moved() -> None:
    model = torch.nn.Linear(4, 4)
    off = ActivationOffloader(model, min_bytes=0)
    x = torch.randn(3, 4, requires_grad=True)
    with off.forward():
        y = model(x).square().sum()
    y.backward()
    assert off.offloaded_bytes == 0 and x.grad is not None


def _grads(model: torch.nn.Module, ids: torch.Tensor, offloader: ActivationOffloader | None) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with offloader.forward() if offloader else torch.enable_grad():
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("reentrant", [True, False])
def test_on_cuda_the_same_gradients_with_the_inputs_offloaded(reentrant: bool) -> None:
    """Every layer checkpointed, every saved tensor offloaded (min_bytes=0): the gradients equal those without, bit
    for bit, over two steps (the second reuses the pinned buffers), and backward's recomputation packs nothing."""
    torch.manual_seed(0)
    model = tiny_model("tiny_llama").cuda().train()
    model.requires_grad_(True)
    set_gradient_checkpointing(model, 1, reentrant)
    ids = torch.randint(3, model.config.vocab_size, (2, 64), device="cuda")
    want = _grads(model, ids, None)
    off = ActivationOffloader(model, min_bytes=0)
    packs_in_backward = []
    real_pack = off._pack

    def pack(t: torch.Tensor) -> object:
        packs_in_backward.append(torch._C._current_graph_task_id() != -1)
        return real_pack(t)

    off._pack = pack
    for _ in range(2):
        got = _grads(model, ids, off)
        assert off.offloaded_bytes > 0 and off.saved
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert not any(packs_in_backward)
