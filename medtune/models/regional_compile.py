"""Regional compilation of the decoder layers, and their eager forwards back for scoring.

    compile_layers(model)          # each decoder layer's forward through torch.compile (training/speed.py)
    with eager_layers(model): ...  # scoring (lm-eval, watch sets): the eager forwards, no recompiles

The layers are identical, so Dynamo compiles one per layer type and reuses it, and FSDP's per-layer hooks stay
outside the compiled code. Shapes are left to Dynamo's automatic dynamic (`dynamic=None`). Scoring batches have a
new length every time, so every scoring site (runtime/shards.py scoring_view) runs the eager forwards instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from medtune.models.anatomy import decoder_layers

_EAGER = "_medtune_eager_forward"  # where a compiled layer keeps its eager forward


def compile_layers(model: nn.Module) -> None:
    """Compile each decoder layer's forward in place (lazily: at its first call), keeping the eager one beside it."""
    for layer in decoder_layers(model):
        setattr(layer, _EAGER, layer.forward)
        layer.forward = torch.compile(layer.forward, dynamic=None)


@contextlib.contextmanager
def eager_layers(model: nn.Module) -> Iterator[None]:
    """The decoder layers' eager forwards for the duration (no recompilation for scoring batches of new lengths)."""
    swapped = [(layer, layer.forward) for layer in decoder_layers(model) if hasattr(layer, _EAGER)]
    for layer, _ in swapped:
        layer.forward = getattr(layer, _EAGER)
    try:
        yield
    finally:
        for layer, compiled in swapped:
            layer.forward = compiled
