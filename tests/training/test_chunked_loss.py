"""chunked_cross_entropy equals the plain full-logits loss and its gradients; lm_head_of / final_softcap_of."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from medtune.models.anatomy import final_softcap_of, lm_head_of
from medtune.training.chunked_loss import chunked_cross_entropy


def _plain(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, softcap: float | None):
    logits = hidden @ weight.t()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")


def _case(n: int, masked: slice | None, seed: int = 0, vocab: int = 37, dim: int = 16):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, dim, generator=gen, dtype=torch.float64).float()
    weight = torch.randn(vocab, dim, generator=gen).float()
    labels = torch.randint(0, vocab, (n,), generator=gen)
    if masked is not None:
        labels[masked] = -100
    return hidden, weight, labels


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("chunk_size", [1, 5, 7, 64])
@pytest.mark.parametrize("masked", [None, slice(0, 9), slice(3, 20, 2)])
def test_chunked_equals_plain_loss_and_grads(softcap: float | None, chunk_size: int, masked: slice | None) -> None:
    hidden, weight, labels = _case(23, masked)
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, n_tokens = chunked_cross_entropy(h1, w1, labels, chunk_size, softcap)
    ref = _plain(h2, w2, labels, softcap)
    assert loss.dtype == torch.float32
    assert int(n_tokens) == int((labels != -100).sum())
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    (loss * 0.37).backward()  # a non-unit upstream gradient must scale the stored gradients
    (ref * 0.37).backward()
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-5, atol=1e-5)
    assert h1.grad[labels == -100].abs().sum() == 0  # masked tokens receive no gradient


def test_all_masked_gives_zero_and_zero_grads() -> None:
    hidden, weight, labels = _case(6, slice(None))
    hidden.requires_grad_()
    loss, n_tokens = chunked_cross_entropy(hidden, weight, labels, 4)
    assert float(loss) == 0.0 and int(n_tokens) == 0
    loss.backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() == 0


def test_frozen_weight_gets_no_grad_and_no_grad_mode_works() -> None:
    hidden, weight, labels = _case(10, None)
    hidden.requires_grad_()
    loss, _ = chunked_cross_entropy(hidden, weight, labels, 3)
    loss.backward()
    assert weight.grad is None and hidden.grad is not None
    with torch.no_grad():
        loss_ng, _ = chunked_cross_entropy(hidden, weight, labels, 3)
    torch.testing.assert_close(loss_ng, loss.detach())


def test_bf16_inputs_are_reduced_in_fp32() -> None:
    hidden, weight, labels = _case(50, None, vocab=300)
    loss, _ = chunked_cross_entropy(hidden.bfloat16(), weight.bfloat16(), labels, 16)
    ref = _plain(hidden.bfloat16().float(), weight.bfloat16().float(), labels, None)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=2e-2, atol=0.0)


def test_bad_inputs_are_refused() -> None:
    hidden, weight, labels = _case(8, None)
    with pytest.raises(ValueError, match="shapes"):
        chunked_cross_entropy(hidden, weight, labels[:-1], 4)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_cross_entropy(hidden, weight, labels, 0)
    labels[0] = 999
    with pytest.raises(ValueError, match="label ids"):
        chunked_cross_entropy(hidden, weight, labels, 4)


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma3"])
def test_model_loss_matches_transformers_loss(arch: str) -> None:
    from peft import LoraConfig, get_peft_model

    model = tiny_model(arch)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    ids = torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :4] = -100
    with torch.no_grad():
        ref = peft_model(input_ids=ids, labels=labels).loss
        hidden = peft_model.get_base_model().model(input_ids=ids).last_hidden_state
        shift = torch.cat([labels[:, 1:], torch.full((2, 1), -100)], dim=1)
        loss, n_tokens = chunked_cross_entropy(
            hidden.reshape(-1, hidden.shape[-1]), lm_head_of(peft_model), shift.reshape(-1), 5, final_softcap_of(model)
        )
    torch.testing.assert_close(loss / n_tokens, ref, rtol=1e-5, atol=1e-5)
    tied = model.config.tie_word_embeddings
    assert (lm_head_of(peft_model).data_ptr() == model.get_input_embeddings().weight.data_ptr()) == tied


def test_softcap_is_read_from_the_config() -> None:
    assert final_softcap_of(tiny_model("tiny_gemma3", final_logit_softcapping=30.0)) == 30.0
    assert final_softcap_of(tiny_model("tiny_llama")) is None
