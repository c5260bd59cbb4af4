"""Where things are inside a (wrapped) causal LM: the transformers model, its decoder, layers and output head.

Training wraps the model (peft, LossModule, DDP, FSDP); evaluation and the memory tools need the pieces. One place
unwraps them all:

    lm = causal_lm_of(model)          # the *ForCausalLM under peft / DDP / LossModule
    layers = decoder_layers(model)    # the repeated decoder blocks
    weight = lm_head_of(model)        # the output projection's weight [vocab, hidden] (refuses a LoRA on it)
"""

from __future__ import annotations

import torch
from torch import nn


def peft_base_of(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (the model itself when it has none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def causal_lm_of(model: nn.Module) -> nn.Module:
    """The transformers *ForCausalLM under any peft, DDP or LossModule layers."""
    inner = model
    while True:
        if hasattr(inner, "get_base_model"):
            inner = inner.get_base_model()
        elif hasattr(inner, "get_output_embeddings"):
            return inner
        elif isinstance(getattr(inner, "module", None), nn.Module):  # DDP / simple wrappers
            inner = inner.module
        elif isinstance(getattr(inner, "model", None), nn.Module):  # LossModule
            inner = inner.model
        else:
            raise ValueError(f"{type(model).__name__} wraps no causal LM with get_output_embeddings().")


def decoder_of(model: nn.Module) -> nn.Module:
    """The decoder stack (embeddings, layers, final norm) whose last_hidden_state feeds the output projection."""
    return causal_lm_of(model).get_decoder()


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The repeated decoder blocks of a (peft-wrapped) causal LM: the first ModuleList named `layers`."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] == "layers" and len(module) > 0:
            return module
    raise ValueError(f"{type(model).__name__} has no `layers` ModuleList; cannot find its decoder layers.")


def output_head_of(model: nn.Module) -> nn.Module:
    """The output projection module (a LoRA-wrapped one included)."""
    return causal_lm_of(model).get_output_embeddings()


def lm_head_of(model: nn.Module) -> torch.Tensor:
    """The output projection weight [vocab, hidden] (tied to the input embedding where the model ties them)."""
    head = output_head_of(model)
    if hasattr(head, "lora_A") or hasattr(head, "base_layer"):
        raise ValueError(
            "the output projection carries a LoRA adapter, which the chunked loss would ignore; "
            "remove lm_head from lora.target_modules."
        )
    return head.weight


def final_softcap_of(model: nn.Module) -> float | None:
    """The final-logit soft-capping value of the model (Gemma 2 style: c * tanh(logits / c)), or None."""
    return getattr(causal_lm_of(model).config, "final_logit_softcapping", None)


def head_dim_of(config: object) -> int:
    """Size of one attention head: the config's head_dim (Gemma 3: 256, not hidden / heads) or hidden / heads.
    A multimodal config (MedGemma 4B) is read through its text config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
