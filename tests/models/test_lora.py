"""apply_lora: adapters train and the base does not; nf4 QLoRA learns; every-k checkpointing; save and merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import REPO

from medtune.config import LoraConfig, ModelConfig, QuantizationConfig
from medtune.models.anatomy import decoder_of, final_softcap_of, lm_head_of
from medtune.models.build import build_model
from medtune.models.lora import (
    apply_lora,
    merge_and_save,
    reentrant_checkpointing,
    save_adapter,
    set_gradient_checkpointing,
    trainable_parameters,
)
from medtune.training.chunked_loss import chunked_cross_entropy

CPU = torch.device("cpu")
ARCHS = REPO / "medtune" / "models" / "archs"
NONE = QuantizationConfig(method="none")


def _build(arch: str = "tiny_llama", method: str = "none", seed: int = 0, **lora_kw):
    torch.manual_seed(seed)
    dtype = "float32" if method == "none" else "bfloat16"
    mc = ModelConfig(name=arch, source="builtin", arch=arch, init="random", dtype=dtype, attn_implementation="eager")
    qc = QuantizationConfig(method=method, compute_dtype=dtype)
    model, tok = build_model(mc, qc, CPU)
    lora = LoraConfig(**{"r": 8, "alpha": 16, "dropout": 0.0, **lora_kw})
    return apply_lora(model, lora, qc, grad_ckpt=lora_kw.pop("ckpt", 0)), tok


def _batch(tok) -> tuple[torch.Tensor, torch.Tensor]:
    texts = ["Question: Which organ pumps blood? Answer: B", "질문: 간의 기능은? 정답: D"]
    enc = tok(texts, return_tensors="pt", padding=True)
    labels = enc.input_ids.clone()
    labels[enc.attention_mask == 0] = -100
    return enc.input_ids, torch.cat([labels[:, 1:], torch.full((2, 1), -100)], dim=1)


def _loss(model, ids: torch.Tensor, shift_labels: torch.Tensor) -> torch.Tensor:
    hidden = decoder_of(model)(input_ids=ids).last_hidden_state
    loss_sum, n = chunked_cross_entropy(
        hidden.reshape(-1, hidden.shape[-1]), lm_head_of(model), shift_labels.reshape(-1), 16, final_softcap_of(model)
    )
    return loss_sum / n


def _train(model, ids, labels, steps: int, lr: float) -> list[float]:
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = _loss(model, ids, labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    return losses


def test_lora_step_changes_the_adapter_and_not_the_base() -> None:
    model, tok = _build()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    _train(model, *_batch(tok), steps=2, lr=1e-2)
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == (name in trainable), name
    stats = trainable_parameters(model)
    assert stats["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < stats["percent"] < 100


def test_nf4_qlora_loss_falls_on_a_memorisable_batch(tmp_path: Path) -> None:
    import bitsandbytes as bnb
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    # At the default init (std 0.02) a 64-wide model's logits cannot move far; a wider init makes memorising possible.
    spec = json.loads((ARCHS / "tiny_llama.json").read_text())
    (tmp_path / "arch.json").write_text(json.dumps({**spec, "initializer_range": 0.3}))
    model, tok = _build(str(tmp_path / "arch.json"), "nf4")
    base_linears = [m for m in model.modules() if type(m) is bnb.nn.Linear4bit]
    assert base_linears and any(isinstance(m, LoraLinear4bit) for m in model.modules())
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)  # adapters in fp32
    assert all(p.dtype != torch.float32 for p in model.parameters() if not p.requires_grad)  # base not upcast
    losses = _train(model, *_batch(tok), steps=20, lr=1e-2)
    assert losses[-1] < 0.25 * losses[0], losses
    for name, param in model.named_parameters():
        # packed 4-bit storage read as bf16 holds NaN bit patterns: compare the bytes
        assert param.requires_grad or torch.equal(param.data.view(torch.uint8), frozen[name].view(torch.uint8)), name
    nf4_total = trainable_parameters(model)["total"]
    assert nf4_total == trainable_parameters(_build("tiny_llama")[0])["total"]  # 4-bit weights counted unpacked


@pytest.mark.parametrize(("every", "reentrant"), [(1, False), (2, False), (1, True), (2, True)])
def test_every_k_checkpointing_gives_the_same_gradients(every: int, reentrant: bool) -> None:
    """Non-reentrant and reentrant (the first forward without a graph; the frozen embedding's output made a leaf
    that requires grad, or layer 0's adapters would get none), with LoRA dropout replayed with the same mask."""
    grads = {}
    for k in (0, every):
        model, tok = _build("tiny_gemma3", dropout=0.2)
        chosen = set_gradient_checkpointing(model, k, reentrant)
        assert chosen == list(range(0, 4, k)) if k else chosen == []
        calls = [0] * 4
        for i, layer in enumerate(model.get_base_model().model.layers):
            layer.self_attn.register_forward_hook(lambda *_, i=i, c=calls: c.__setitem__(i, c[i] + 1))
        model.train()
        torch.manual_seed(3)
        _loss(model, *_batch(tok)).backward()
        # a checkpointed layer runs its attention twice: forward, then again in backward
        assert calls == [2 if i in chosen else 1 for i in range(4)]
        grads[k] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    for name, grad in grads[0].items():
        assert "lora_A" in name or grad.abs().sum() > 0, name  # every B, layer 0's too, got one (A's start at 0: B=0)
        torch.testing.assert_close(grads[every][name], grad, rtol=1e-6, atol=1e-7)


def test_reentrant_only_without_ddp_or_fsdp_and_not_compiled() -> None:
    """By the wrapper, not the rank count: `torchrun --nproc-per-node 1 ... sharding=fsdp` keeps non-reentrant."""
    assert reentrant_checkpointing("auto", compiled=False, wrapper="none")
    assert not reentrant_checkpointing("auto", compiled=True, wrapper="none")
    assert not reentrant_checkpointing("auto", compiled=False, wrapper="fsdp")
    assert not reentrant_checkpointing("auto", compiled=False, wrapper="ddp")
    assert not reentrant_checkpointing("non_reentrant", compiled=False, wrapper="none")
    assert reentrant_checkpointing("reentrant", compiled=False, wrapper="none")
    from medtune.config import ConfigError, compose

    with pytest.raises(ConfigError, match="grad_ckpt_style=reentrant with sharding=fsdp"):
        compose(["trainer.grad_ckpt_style=reentrant", "sharding=fsdp"])


def test_dora_and_explicit_targets() -> None:
    model, _ = _build(target_modules=["q_proj", "v_proj"], use_dora=True)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_magnitude_vector" in n for n in names)
    assert all(("q_proj" in n or "v_proj" in n) for n in names)


def test_save_adapter_round_trips(tmp_path: Path) -> None:
    from peft import PeftModel

    model, tok = _build(seed=1)
    ids, labels = _batch(tok)
    _train(model, ids, labels, steps=3, lr=1e-2)
    save_adapter(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    torch.manual_seed(1)  # the same seed rebuilds the same random base
    base, _ = build_model(model.medtune_model_cfg, NONE, CPU)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_merge_and_save_writes_a_bf16_model_with_the_adapter_folded_in(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model, tok = _build(seed=2)
    ids, labels = _batch(tok)
    _train(model, ids, labels, steps=3, lr=1e-2)
    merge_and_save(model, tmp_path / "merged", tokenizer=tok)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", attn_implementation="eager").eval()
    assert merged.model.embed_tokens.weight.dtype == torch.bfloat16
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits.float(), model(input_ids=ids).logits, atol=0.05, rtol=0)
    assert any(p.requires_grad for p in model.parameters())  # the trained model itself was left alone


def test_merge_refuses_a_random_quantised_base(tmp_path: Path) -> None:
    model, _ = _build(method="nf4")
    with pytest.raises(ValueError, match="random weights"):
        merge_and_save(model, tmp_path / "merged")


def test_bf16_adapter_loss_curve_figures_are_the_committed_runs() -> None:
    """experiments/results/lora_dtype_cpu: the README figures are the two runs' own metrics, and the claim holds."""
    folder = REPO / "experiments" / "results" / "lora_dtype_cpu"
    result = json.loads((folder / "results.json").read_text())
    curves = {}
    for dtype in ("float32", "bfloat16"):
        rows = [json.loads(x) for x in (folder / f"lora_{dtype}" / "metrics.jsonl").read_text().splitlines()]
        curves[dtype] = [r["train/loss"] for r in rows if "train/loss" in r]
        assert curves[dtype] == result["runs"][dtype]["train_loss"] and len(curves[dtype]) == 60
    readme = (folder / "README.md").read_text()
    last10 = {d: sum(c[-10:]) / 10 for d, c in curves.items()}
    for dtype in curves:
        eval_loss = result["eval_loss"][dtype]
        assert f"| {dtype} | {curves[dtype][0]:.4f} | {last10[dtype]:.4f} | {eval_loss:.4f} |" in readme
    # README: the train loss ends 0.15% and the eval loss 0.2% above fp32 adapters'
    assert round(100 * (last10["bfloat16"] / last10["float32"] - 1), 2) == 0.15
    assert round(100 * (result["eval_loss"]["bfloat16"] / result["eval_loss"]["float32"] - 1), 1) == 0.2
    diffs = [b - a for a, b in zip(curves["float32"], curves["bfloat16"], strict=True)]
    assert f"max {max(abs(d) for d in diffs):.4f}" in readme
