"""Checkpointed activations kept in pinned CPU memory, copied out and back on a stream of their own.

    offloader = ActivationOffloader(model)    # once per run (the pinned buffers are reused step after step)
    with offloader.forward():                 # the forward only: backward's recomputation stays on the GPU
        loss = compute_loss(...)
    loss.backward()                           # each saved tensor comes back just before its layer needs it

`trainer.offload_activations=true` (or the memory plan, when checkpointing every layer does not fit the budget).
With every layer checkpointed what the forward saves is one input per layer (rows x seq x hidden, bf16); this
moves each to the CPU while the next layers compute, and in backward starts bringing back the input of layer i-1
while layer i recomputes and differentiates, so the copies overlap the compute instead of waiting for it (torch's
`save_on_cpu` copies on the compute stream, and ran inside backward too, where the recomputed layers' tensors made
a round trip each: -15% tokens/s on an H200). Tensors under `min_bytes`, on the CPU, or that are the model's own
parameters stay where they are. The same tensors come back bit for bit (tests/training/test_offload.py).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator

import torch
from torch import nn

MIN_BYTES = 1 << 20  # smaller tensors are not worth a copy each way


class _Saved:
    """One offloaded tensor: its pinned CPU copy, and the GPU copy being brought back (with its event)."""

    __slots__ = ("cpu", "device", "gpu", "index", "ready", "unpacked")

    def __init__(self, cpu: torch.Tensor, device: torch.device, index: int) -> None:
        self.cpu, self.device, self.index = cpu, device, index
        self.gpu: torch.Tensor | None = None
        self.ready: torch.cuda.Event | None = None
        self.unpacked = False


class ActivationOffloader:
    """saved_tensors_hooks that offload large activations to pinned memory and prefetch them for backward."""

    def __init__(self, model: nn.Module, min_bytes: int = MIN_BYTES) -> None:
        self.min_bytes = min_bytes
        self.params = {p.data_ptr() for p in model.parameters()}
        self.stream = torch.cuda.Stream() if torch.cuda.is_available() else None
        self.pool: dict[tuple, list[torch.Tensor]] = defaultdict(list)  # free pinned buffers by (shape, dtype)
        self.in_use: list[torch.Tensor] = []
        self.saved: list[_Saved] = []
        self.offloaded_bytes = 0  # of the last forward

    @contextlib.contextmanager
    def forward(self) -> Iterator[None]:
        """Offload what this forward saves for backward (the previous step's buffers are free again)."""
        if self.stream is not None:
            self.stream.synchronize()  # the last backward's copies back are done: every buffer can be reused
        for buf in self.in_use:
            self.pool[(tuple(buf.shape), buf.dtype)].append(buf)
        self.in_use, self.saved, self.offloaded_bytes = [], [], 0
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            yield

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor | _Saved:
        size = tensor.numel() * tensor.element_size()
        if self.stream is None or not tensor.is_cuda or size < self.min_bytes or tensor.data_ptr() in self.params:
            return tensor
        free = self.pool[(tuple(tensor.shape), tensor.dtype)]
        cpu = free.pop() if free else torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        self.in_use.append(cpu)
        self.stream.wait_stream(torch.cuda.current_stream(tensor.device))  # the tensor is written by then
        with torch.cuda.stream(self.stream):
            cpu.copy_(tensor, non_blocking=True)
        tensor.record_stream(self.stream)  # its memory is not reused before the copy has read it
        self.offloaded_bytes += size
        saved = _Saved(cpu, tensor.device, len(self.saved))
        self.saved.append(saved)
        return saved

    def _fetch(self, saved: _Saved, prefetch: bool = False) -> None:
        if saved.gpu is not None or (prefetch and saved.unpacked):
            return
        with torch.cuda.stream(self.stream):  # after its own copy out on the same stream
            saved.gpu = torch.empty(saved.cpu.shape, dtype=saved.cpu.dtype, device=saved.device)
            saved.gpu.copy_(saved.cpu, non_blocking=True)
            saved.ready = torch.cuda.Event()
            saved.ready.record(self.stream)

    def _unpack(self, saved: torch.Tensor | _Saved) -> torch.Tensor:
        if isinstance(saved, torch.Tensor):
            return saved
        self._fetch(saved)
        if saved.index > 0:  # backward runs the layers last to first: bring the one before back meanwhile
            self._fetch(self.saved[saved.index - 1], prefetch=True)
        current = torch.cuda.current_stream(saved.device)
        current.wait_event(saved.ready)
        gpu = saved.gpu
        gpu.record_stream(current)  # made on the side stream, used (and freed) on this one
        saved.gpu, saved.unpacked = None, True  # unpacked once (reentrant checkpointing); again: fetched again
        return gpu
