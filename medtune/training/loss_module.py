"""The forward pass that training and eval-loss share: decoder, then chunked cross-entropy, inside one module.

`LossModule` wraps the (peft) causal LM so that the loss is computed inside `forward`. Under FSDP the wrapper is
the root unit, so the embedding, final norm and (tied) output projection are gathered for the whole of the loss
computation, and the full-vocabulary logits are never materialised (Gemma 3 has 262k tokens).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from medtune.config import TrainerConfig
from medtune.models.anatomy import causal_lm_of, decoder_of, final_softcap_of, lm_head_of
from medtune.models.document_masks import model_inputs
from medtune.models.precision import TORCH_DTYPES
from medtune.training.chunked_loss import chunked_cross_entropy


class LossModule(torch.nn.Module):
    """causal LM -> (sum of token losses, number of label tokens) for one batch."""

    def __init__(self, model: torch.nn.Module, chunk_size: int, kernel: str = "auto") -> None:
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.kernel = kernel  # trainer.loss_kernel

    @property
    def scored_lm(self) -> torch.nn.Module:
        """The (peft) causal LM inside: what runtime/shards.py scores (scoring_view) and unwraps."""
        return self.model

    def probe_(self) -> None:
        """A forward that counts nothing (no label: loss 0), for FSDP's first-forward setup (runtime/shards.py)."""
        device = next(self.model.parameters()).device
        one = torch.zeros((1, 2), dtype=torch.long, device=device)
        position_ids = torch.arange(2, device=device)[None]
        self(input_ids=one, position_ids=position_ids, document_ids=one, shift_labels=torch.full_like(one, -100))

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        document_ids: torch.Tensor,
        shift_labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lm = causal_lm_of(self.model)
        batch = {"input_ids": input_ids, "position_ids": position_ids, "document_ids": document_ids}
        hidden = decoder_of(lm)(**model_inputs(batch, self.model)).last_hidden_state  # per-document masks built here
        hidden = hidden.reshape(-1, hidden.shape[-1])
        return chunked_cross_entropy(
            hidden, lm_head_of(lm), shift_labels.reshape(-1), self.chunk_size, final_softcap_of(lm), self.kernel
        )


def _autocast(device: torch.device, tc: TrainerConfig) -> torch.autocast:
    dtype = TORCH_DTYPES[tc.autocast_dtype] if tc.autocast_dtype else torch.float32
    return torch.autocast(device.type, dtype=dtype, enabled=tc.autocast_dtype is not None)


def compute_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device, tc: TrainerConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of token losses and label-token count of one micro-batch (model is a LossModule, maybe wrapped)."""
    keys = ("input_ids", "position_ids", "document_ids", "shift_labels")
    inputs = {k: batch[k].to(device, non_blocking=True) for k in keys}
    with _autocast(device, tc):
        return model(**inputs)


@torch.no_grad()
def eval_loss(
    model: torch.nn.Module,
    batches: list[dict[str, torch.Tensor]],
    device: torch.device,
    tc: TrainerConfig,
    on_batch: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss and label tokens over `batches` (caller divides, after any all-reduce); `on_batch`: progress."""
    total = torch.zeros((), device=device)
    n = torch.zeros((), device=device)
    for batch in batches:
        if on_batch is not None:
            on_batch()
        loss_sum, count = compute_loss(model, batch, device, tc)
        total += loss_sum.float()
        n += count
    return total, n
