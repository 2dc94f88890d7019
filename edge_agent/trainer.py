"""The torch runtime: slice training on the device, the reference for the lean runtime.

With ``micro_batch`` set, each batch's gradient is accumulated over chunks of that size,
which divides activation memory by the chunking and leaves the update unchanged.

Frozen tensors get ``requires_grad=False`` and no optimizer state, and the frozen prefix of
the model (every module before the first trainable one) runs under ``torch.no_grad``, in
chunks of ``FROZEN_PREFIX_CHUNK`` samples, so autograd keeps none of its activations and its
transient memory does not grow with the batch. The delta of the slice is returned and the device's
copy of the model is put back to the global values it was assigned, so the next assignment
only needs to carry what changed on the server.

Batch norms from the first trainable layer on train in training mode (batch statistics) and
move their running statistics, whose new values are returned beside the delta; those of the
frozen prefix run in eval mode and move nothing (``ftte.tasks.layers.updated_buffers``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from edge_agent.runtime import TrainResult, epoch_batches
from ftte.memory import FLOAT_BYTES, FROZEN_PREFIX_CHUNK
from ftte.tasks.base import Dataset, ModelSpec
from ftte.tasks.layers import BUFFERS
from ftte.tasks.objectives import CLASSIFICATION, Objective
from ftte.tasks.torch_model import model_buffers
from ftte.training import ADAM_BETAS, ADAM_EPS, Optimizer
from ftte.wire.messages import Evaluation, TrainConfig


class TorchModel:
    """The device's model as a torch ``nn.Sequential`` (the ``torch`` runtime)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.model = spec.make_model()
        self.objective = spec.objective
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._params = dict(self.model.named_parameters())
        self._buffers = model_buffers(self.model, spec.layers)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's name and shape."""
        return {n: tuple(p.shape) for n, p in self._params.items()}

    def buffer_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every buffer's name and shape (batch norms' running statistics)."""
        return {n: tuple(b.shape) for n, b in self._buffers.items()}

    def load(self, values: Mapping[str, np.ndarray]) -> None:
        """Set the named parameters and buffers to ``values``."""
        with torch.no_grad():
            for name, value in values.items():
                target = self._params[name] if name in self._params else self._buffers[name]
                target.copy_(torch.from_numpy(value))

    def train(
        self, trainable: Collection[str], data: Dataset, config: TrainConfig, seed: int
    ) -> TrainResult:
        """Train ``trainable`` on ``data`` (``train_slice``)."""
        return train_slice(self.model, trainable, data, config, seed, self.objective)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The loaded model's outputs for samples ``x``."""
        self.model.eval()
        with torch.no_grad():
            out = _frozen_forward(self.model, torch.from_numpy(np.asarray(x, np.float32)))
        return out.numpy()

    def evaluate(self, data: Dataset) -> Evaluation:
        """The objective's metrics of the loaded model on ``data``."""
        return Evaluation(len(data), self.objective.metrics(self.logits(data.x), data))


def train_slice(
    model: nn.Sequential,
    trainable: Collection[str],
    data: Dataset,
    config: TrainConfig,
    seed: int,
    objective: Objective = CLASSIFICATION,
) -> TrainResult:
    """Train only ``trainable`` of ``model`` on ``data`` under ``objective``'s loss; return
    the delta and measurements."""
    params = dict(model.named_parameters())
    unknown = set(trainable) - params.keys()
    if unknown or not trainable:
        raise ValueError(f"slice must name parameters of the model; unknown: {sorted(unknown)}")
    if len(data) == 0:
        raise ValueError("no local training data")
    for name, p in params.items():
        p.requires_grad_(name in trainable)
    first = min(int(name.split(".", 1)[0]) for name in trainable)
    frozen_prefix, trained_suffix = model[:first], model[first:]
    start = {name: params[name].detach().clone() for name in trainable}
    # Every buffer behind the frozen prefix moves in training mode (num_batches_tracked too);
    # all are put back after, and the running statistics' new values returned.
    moved = {n: b for n, b in model.named_buffers() if int(n.split(".", 1)[0]) >= first}
    start_buffers = {n: b.clone() for n, b in moved.items()}
    slice_params = [params[n] for n in trainable]
    optimizer = _optimizer(slice_params, config)
    x_all = torch.from_numpy(data.x)
    y_all = torch.from_numpy(objective.targets(data))
    meter = _PeakMeter(model, trainable, config.optimizer_slots)
    epoch_loss = 0.0
    model.train()
    frozen_prefix.eval()  # inference: batch norms there use, and keep, the running statistics
    processed = 0
    for batches in epoch_batches(len(data), config, seed):
        total, count = 0.0, 0
        for indices in batches:
            batch = torch.from_numpy(indices)
            optimizer.zero_grad(set_to_none=True)
            # Summed chunk losses over the batch size: the accumulated gradient is the
            # batch's mean gradient, whatever the chunking.
            for chunk in batch.split(config.micro_batch or len(batch)):
                x, y = x_all[chunk], y_all[chunk]
                with meter.watch(x):
                    h = _frozen_forward(frozen_prefix, x)
                    loss = objective.torch_loss_sum(trained_suffix(h), y)
                (loss / len(batch)).backward()
                total += float(loss.detach())
            if config.clip_norm > 0:
                nn.utils.clip_grad_norm_(slice_params, config.clip_norm)
            optimizer.step()
            count += len(batch)
        epoch_loss = total / count
        processed += count
    delta = {}
    with torch.no_grad():
        for name in trainable:
            delta[name] = (params[name] - start[name]).numpy().astype(np.float32, copy=True)
            params[name].copy_(start[name])
        buffers = {
            n: b.numpy().astype(np.float32, copy=True)
            for n, b in moved.items()
            if n.rsplit(".", 1)[1] in BUFFERS
        }
        for name, value in start_buffers.items():
            moved[name].copy_(value)
    model.eval()
    for p in params.values():
        p.requires_grad_(False)
    return TrainResult(
        delta=delta,
        num_samples=len(data),
        loss=epoch_loss,
        peak_mem_bytes=meter.peak,
        samples_processed=processed,
        buffers=buffers,
    )


def _optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """The assignment's optimizer over the slice, fresh: its state lives for one assignment."""
    if config.optimizer is Optimizer.ADAM:
        return torch.optim.Adam(params, lr=config.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)


def _frozen_forward(prefix: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run the frozen prefix without autograd, a few samples at a time to cap its transient."""
    if not any(True for _ in prefix.children()):
        return x
    with torch.no_grad():
        return torch.cat([prefix(chunk) for chunk in x.split(FROZEN_PREFIX_CHUNK)])


class _PeakMeter:
    """Accounts the bytes of the real tensors live during training.

    Weights, gradients, optimizer state and the slice's starting values are counted from
    the tensors themselves. On the
    largest batch, a forward hook on every module adds what is live while it runs: the input
    batch, the activations autograd has saved so far (captured with saved-tensor hooks,
    de-duplicated by storage) and the module's own input and output. Scratch memory inside
    kernels is not visible here; tests/unit/test_memory_model.py checks the memory model
    against torch's profiler, which sees it.
    """

    def __init__(
        self, model: nn.Sequential, trainable: Collection[str], optimizer_slots: int
    ) -> None:
        params = dict(model.named_parameters())
        self._model = model
        self._param_storages = {p.untyped_storage().data_ptr() for p in params.values()}
        trainable_numel = sum(params[n].numel() for n in trainable)
        first = min(int(n.split(".", 1)[0]) for n in trainable)
        # Buffers are held once, and those training moves once more (their starting values).
        buffers = [(int(n.split(".", 1)[0]), _nbytes(b)) for n, b in model.named_buffers()]
        self._static = (
            sum(p.numel() for p in params.values()) * FLOAT_BYTES
            + trainable_numel * FLOAT_BYTES * (2 + optimizer_slots)
            + sum(size for _, size in buffers)
            + sum(size for layer, size in buffers if layer >= first)
        )
        self._largest_batch = 0
        self.peak = self._static

    @contextmanager
    def watch(self, x: torch.Tensor) -> Iterator[None]:
        """Measure the forward pass of ``x`` if it is the largest batch so far."""
        if x.shape[0] <= self._largest_batch:
            yield
            return
        self._largest_batch = x.shape[0]
        saved: dict[int, int] = {}
        base = self._static + _nbytes(x)

        def pack(t: torch.Tensor) -> torch.Tensor:
            ptr = t.untyped_storage().data_ptr()
            if ptr not in self._param_storages:
                saved[ptr] = t.untyped_storage().nbytes()
            return t

        def after_module(
            _m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor
        ) -> None:
            live = base + sum(saved.values()) + _nbytes(inputs[0]) + _nbytes(out)
            self.peak = max(self.peak, live)

        handles = [m.register_forward_hook(after_module) for m in self._model]
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, _identity):
                yield
        finally:
            for h in handles:
                h.remove()
        self.peak = max(self.peak, base + sum(saved.values()))


def _nbytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t
