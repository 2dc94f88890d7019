"""The memory model: predicted peak training memory of a parameter slice.

peak(slice) = all weights and buffers + the slice's gradients + its optimizer state
              + the slice's starting values (kept to form the delta)
              + the starting values of the buffers training moves (batch norms' running
                statistics from the first trainable layer on, put back after)
              + the input batch
              + max(frozen phase, trained phase), where
                frozen phase  = the largest transient of a frozen-prefix module, run in chunks
                                of FROZEN_PREFIX_CHUNK samples, plus the prefix output
                                gathered from its chunks;
                trained phase = activations kept for backward (only from the earliest
                                trainable layer on) + the largest transient of a module
                                behind it on the whole batch.
The two phases never overlap in time: nothing is kept for backward while the frozen
prefix runs.

Activation bytes are not guessed from layer types: ``MemoryModel.profile`` runs the model
once per tensor on a tiny batch under ``torch.autograd.graph.saved_tensors_hooks`` and
records which tensors autograd really keeps, de-duplicated by storage and excluding the
parameters themselves. That captures framework details a formula misses (a frozen Linear
keeps nothing of its input, a ReLU keeps its output, max-pooling keeps int64 indices).
The result is additive per tensor, so the planner can evaluate thousands of slices without
touching torch again.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Imported inside the profiling functions at run time: the device's lean runtime uses
    # this module's constants and must not load torch (370 MB RSS).
    import torch
    from torch import nn
    from torch.autograd.profiler import profile

FLOAT_BYTES = 4  # weights, gradients and optimizer state are float32 on the device
PROFILE_BATCH = 4  # activations scale linearly in the batch; a small batch keeps profiling cheap
# The frozen prefix is inference only, so the trainer runs it in chunks of this many samples:
# its transient memory then stops growing with the batch size.
FROZEN_PREFIX_CHUNK = 4


@dataclass(frozen=True)
class TensorProfile:
    """One parameter tensor as the memory model sees it."""

    name: str
    layer: int  # position of its module in the ``nn.Sequential``
    numel: int
    first_act_per_sample: int  # saved bytes when it is the only trainable tensor
    extra_act_per_sample: int  # saved bytes it adds when the gradient path already reaches it


@dataclass(frozen=True)
class MemoryBreakdown:
    """Predicted peak training memory in bytes, by term."""

    weights: int
    gradients: int
    optimizer: int
    snapshot: int
    inputs: int
    frozen_phase: int  # transient of the frozen prefix
    activations: int  # kept for backward
    workspace: int  # transient of the trained part, beside the activations

    @property
    def total(self) -> int:
        """Sum of the terms: the predicted peak."""
        return (
            self.weights
            + self.gradients
            + self.optimizer
            + self.snapshot
            + self.inputs
            + max(self.frozen_phase, self.activations + self.workspace)
        )


class MemoryModel:
    """Predicts peak training memory of any trainable subset of a sequential model."""

    def __init__(
        self,
        tensors: list[TensorProfile],
        weight_bytes: int,
        transients: list[tuple[int, int]],
        boundary_per_sample: list[int],
        input_per_sample: int,
        buffers: list[tuple[int, int]] | None = None,
    ) -> None:
        self.tensors = {t.name: t for t in tensors}
        self.order = [t.name for t in tensors]
        self.weight_bytes = weight_bytes
        self.transients = transients  # per module: (fixed bytes, bytes per sample)
        self.boundary_per_sample = boundary_per_sample  # per module: bytes of its input
        self.input_per_sample = input_per_sample
        self.buffers = buffers or []  # per buffer: (position of its module, bytes)

    @classmethod
    def profile(cls, model: nn.Sequential, input_shape: tuple[int, ...]) -> MemoryModel:
        """Measure per-tensor activation costs of ``model`` for inputs of ``input_shape``."""
        import torch

        params = dict(model.named_parameters())
        layer_of = {name: int(name.split(".", 1)[0]) for name in params}
        x = torch.zeros((PROFILE_BATCH, *input_shape))
        with torch.random.fork_rng():
            torch.manual_seed(0)
            x.uniform_()
        y = torch.zeros(PROFILE_BATCH, dtype=torch.long)
        profiles = []
        path = _saved_bytes(model, x, y, trainable=set(), input_grad=True)
        for name, p in params.items():
            alone = _saved_bytes(model, x, y, trainable={name}, input_grad=False)
            with_path = _saved_bytes(model, x, y, trainable={name}, input_grad=True)
            profiles.append(
                TensorProfile(
                    name=name,
                    layer=layer_of[name],
                    numel=p.numel(),
                    first_act_per_sample=_ceil_div(alone, PROFILE_BATCH),
                    extra_act_per_sample=_ceil_div(max(0, with_path - path), PROFILE_BATCH),
                )
            )
        weight_bytes = sum(p.numel() for p in params.values()) * FLOAT_BYTES
        buffers = [
            (int(n.split(".", 1)[0]), b.untyped_storage().nbytes())
            for n, b in model.named_buffers()
        ]
        # Live at the peak besides what autograd keeps: the input batch and labels, and the
        # largest transient of any one module (its input, its output and whatever scratch
        # the kernel allocates, e.g. a layout reorder in oneDNN convolutions).
        # Kernels keep some scratch whatever the batch, so fit fixed + per-sample bytes.
        small = _module_transients(model, x)
        large = _module_transients(model, torch.cat([x, x]))
        transients = []
        for (t_small, _), (t_large, _) in zip(small, large, strict=True):
            per_sample = _ceil_div(max(0, t_large - t_small), PROFILE_BATCH)
            transients.append((max(0, t_small - per_sample * PROFILE_BATCH), per_sample))
        boundary = [_ceil_div(b, PROFILE_BATCH) for _, b in small]
        input_bytes = x[0].numel() * FLOAT_BYTES + 8
        return cls(profiles, weight_bytes, transients, boundary, input_bytes, buffers)

    def buffer_bytes(self, first_layer: int) -> int:
        """Buffers held while training from ``first_layer``: every one, and the starting
        values of those training moves (from ``first_layer`` on)."""
        moved = sum(size for layer, size in self.buffers if layer >= first_layer)
        return sum(size for _, size in self.buffers) + moved

    def first_layer(self, trainable: Collection[str]) -> int:
        """Position of the earliest module with a trainable tensor."""
        return min(self.tensors[name].layer for name in trainable)

    def breakdown(
        self,
        trainable: Collection[str],
        batch_size: int,
        optimizer_slots: int,
        micro_batch: int = 0,
    ) -> MemoryBreakdown:
        """Predicted peak of training ``trainable`` at ``batch_size``, term by term, with
        ``optimizer_slots`` state values per trained value (``TrainSettings.optimizer_slots``).

        With ``micro_batch`` (gradient accumulation), the batch's input is held whole while
        activations and transients are those of one chunk.
        """
        unknown = set(trainable) - self.tensors.keys()
        if unknown:
            raise KeyError(f"not parameters of this model: {sorted(unknown)}")
        if not trainable:
            raise ValueError("a slice needs at least one trainable tensor")
        trainable_numel = sum(self.tensors[n].numel for n in trainable)
        first = self.first_layer(trainable)
        chunk = min(micro_batch or batch_size, batch_size)
        moved = sum(size for layer, size in self.buffers if layer >= first)
        return MemoryBreakdown(
            weights=self.weight_bytes + sum(size for _, size in self.buffers),
            gradients=trainable_numel * FLOAT_BYTES,
            optimizer=trainable_numel * FLOAT_BYTES * optimizer_slots,
            snapshot=trainable_numel * FLOAT_BYTES + moved,
            activations=self.activation_per_sample(trainable) * chunk,
            inputs=self.input_per_sample * batch_size,
            frozen_phase=self.frozen_phase(first, chunk),
            workspace=self.trained_transient(first, chunk),
        )

    def peak_bytes(
        self,
        trainable: Collection[str],
        batch_size: int,
        optimizer_slots: int,
        micro_batch: int = 0,
    ) -> int:
        """Predicted peak training memory in bytes (the arguments: see ``breakdown``)."""
        return self.breakdown(trainable, batch_size, optimizer_slots, micro_batch).total

    def frozen_phase(self, first_layer: int, batch_size: int) -> int:
        """Peak transient of the frozen prefix: one chunk's largest module transient plus
        the prefix output gathered from its chunks (twice while the chunks are joined)."""
        if first_layer == 0:
            return 0
        chunk = min(batch_size, FROZEN_PREFIX_CHUNK)
        largest = max(fixed + ps * chunk for fixed, ps in self.transients[:first_layer])
        return largest + 2 * self.boundary_per_sample[first_layer] * batch_size

    def trained_transient(self, first_layer: int, batch_size: int) -> int:
        """Largest transient of a module from the first trainable one on, on the batch."""
        return max(fixed + ps * batch_size for fixed, ps in self.transients[first_layer:])

    def activation_per_sample(self, trainable: Collection[str]) -> int:
        """Bytes autograd keeps per sample: the first layer's cost plus what the rest add."""
        first = self.first_layer(trainable)
        in_first = [self.tensors[n] for n in trainable if self.tensors[n].layer == first]
        anchor = min(in_first, key=lambda t: t.first_act_per_sample)
        rest = sum(self.tensors[n].extra_act_per_sample for n in trainable if n != anchor.name)
        return anchor.first_act_per_sample + rest

    def full_model_peak(self, batch_size: int, optimizer_slots: int) -> int:
        """Predicted peak when every tensor trains (what FedAvg asks of a device)."""
        return self.peak_bytes(self.order, batch_size, optimizer_slots)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence the profiler's native start/stop lines, which bypass Python's sys.stderr."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _module_transients(model: nn.Sequential, x: torch.Tensor) -> list[tuple[int, int]]:
    """Per module: peak bytes held while it runs (input + allocations) and input bytes."""
    import torch

    transients = []
    with torch.no_grad(), _quiet_native_stderr():
        h = x
        for module in model:
            with allocator_trace() as prof:
                out = module(h)
            size = h.untyped_storage().nbytes()
            transients.append((size + allocation_peak(prof), size))
            h = out
    return transients


def allocator_trace() -> profile:
    """A profiler that records every allocation of torch's CPU allocator.

    The autograd profiler, not ``torch.profiler.profile``: the latter imports
    ``torch._inductor`` on entry (3.4 s of start-up in every process that plans slices).
    """
    from torch.autograd.profiler import profile

    return profile(use_cpu=True, profile_memory=True)


def allocation_peak(prof: profile) -> int:
    """Largest sum of live allocations torch's CPU allocator reported inside ``prof``."""
    # The public event list drops most allocation records; kineto's raw results keep them all.
    results: Any = prof.kineto_results
    if results is None:
        raise RuntimeError("torch profiler returned no results; use allocator_trace()")
    events = [e for e in results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


@contextmanager
def _frozen_except(model: nn.Module, trainable: set[str]) -> Iterator[None]:
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        for n, p in model.named_parameters():
            p.requires_grad_(n in trainable)
        yield
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])


def _saved_bytes(
    model: nn.Sequential,
    x: torch.Tensor,
    y: torch.Tensor,
    trainable: set[str],
    input_grad: bool,
) -> int:
    """Bytes of distinct non-parameter storages autograd saves for one forward + loss."""
    import torch

    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in param_storages:
            seen[ptr] = storage.nbytes()
        return t

    inp = x.clone().requires_grad_(input_grad)
    with _frozen_except(model, trainable), torch.autograd.graph.saved_tensors_hooks(pack, _unpack):
        out = model(inp)
        loss = torch.nn.functional.cross_entropy(out, y)
    del loss, out
    return sum(seen.values())


def _unpack(t: torch.Tensor) -> torch.Tensor:
    return t
