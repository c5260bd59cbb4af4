"""Shared by the packing-kernel tests: random examples, and packed logits/loss against one-by-one runs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medtune.data.packing import IGNORE_INDEX
from medtune.models.document_masks import model_inputs

# longer than tiny_gemma3's sliding window of 8, so the sliding layers' mask matters
LENGTHS = [13, 11, 9, 17, 10, 20, 25, 12]


def make_examples(lengths: list[int] = LENGTHS, seed: int = 0) -> list[dict]:
    """Random token ids with the first third of each sample's labels masked, like a prompt."""
    gen = torch.Generator().manual_seed(seed)
    examples = []
    for i, n in enumerate(lengths):
        ids = torch.randint(3, 500, (n,), generator=gen).tolist()
        labels = [IGNORE_INDEX] * (n // 3) + ids[n // 3 :]
        examples.append({"id": f"t:{i}", "input_ids": ids, "labels": labels})
    return examples


def compare_packed(
    model: torch.nn.Module, batches: list[dict], examples: list[dict], reference: torch.nn.Module | None = None
) -> dict[str, float]:
    """Largest per-token logit gap between packed and one-by-one runs (by `reference`, default the same model)."""
    reference = reference or model
    max_diff, packed_sum, alone_sum, n_packed, n_alone = 0.0, 0.0, 0.0, 0, 0
    device = next(model.parameters()).device
    for batch in batches:
        logits = model(**model_inputs(batch, model)).logits.float()
        targets = batch["shift_labels"].to(device)
        packed_sum += F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
        n_packed += int((targets != IGNORE_INDEX).sum())
        k = 0
        for row in range(batch["input_ids"].shape[0]):
            for doc in range(int(batch["document_ids"][row].max()) + 1):
                example = examples[int(batch["example_index"][k])]
                k += 1
                ids = torch.tensor(example["input_ids"], device=device)[None]
                alone = reference(input_ids=ids, use_cache=False).logits[0].float()
                here = logits[row, (batch["document_ids"][row] == doc).to(device)]
                max_diff = max(max_diff, (here - alone).abs().max().item())
                labels = torch.tensor(example["labels"], device=device)
                alone_sum += F.cross_entropy(alone[:-1], labels[1:], reduction="sum").item()
                n_alone += int((labels[1:] != IGNORE_INDEX).sum())
    assert n_packed == n_alone, "packing changed the number of label tokens"
    return {"max_diff": max_diff, "packed_loss": packed_sum / n_packed, "alone_loss": alone_sum / n_alone}
