"""The device's training runtimes: what they share and how one is chosen.

Two runtimes train a slice with the same semantics (``edge_agent.trainer``, the torch
reference, and ``edge_agent.lean``, numpy only). This module is torch-free and imports the
chosen runtime only when asked, so an agent on the lean runtime never loads torch.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ftte.tasks.base import Dataset, ModelSpec
from ftte.wire.messages import Evaluation, TensorDict, TrainConfig

RUNTIMES = ("lean", "torch")
"""``lean``: numpy/BLAS, no torch (the default). ``torch``: the reference trainer, for
models the layer spec cannot describe."""
REFERENCE = "torch"  # the runtime the others are checked against; the simulator's default


@dataclass(frozen=True)
class TrainResult:
    """The outcome of one local training: slice delta, sample count, loss, measured peak."""

    delta: TensorDict
    num_samples: int
    loss: float
    peak_mem_bytes: int
    samples_processed: int  # samples seen, epochs included, for compute-time accounting
    # New values of the running statistics the pass moved (``ModelSpec.updated_buffers``).
    buffers: TensorDict = field(default_factory=dict)


class SliceTrainer(Protocol):
    """A runtime's copy of the model: load global values, train a slice from them."""

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's name and shape."""
        ...

    def buffer_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every buffer's name and shape (batch norms' running statistics)."""
        ...

    def load(self, values: Mapping[str, np.ndarray]) -> None:
        """Set the named parameters and buffers to ``values`` (the global model's)."""
        ...

    def train(
        self, trainable: Collection[str], data: Dataset, config: TrainConfig, seed: int
    ) -> TrainResult:
        """Train ``trainable`` on ``data``; return the delta and leave the model unchanged."""
        ...

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The loaded model's outputs for samples ``x`` (prediction)."""
        ...

    def evaluate(self, data: Dataset) -> Evaluation:
        """How the loaded model does on ``data``: mean ``loss`` and ``accuracy``."""
        ...


def epoch_batches(num_samples: int, settings: TrainConfig, seed: int) -> Iterator[list[np.ndarray]]:
    """Each epoch's batches of sample indices, a new order every epoch, stopping after
    ``settings.steps`` batches when that is set: one torch-free source, so both runtimes
    see the same batches for the same seed and their deltas can be compared."""
    rng = np.random.default_rng(seed)
    left = settings.steps or settings.epochs * -(-num_samples // settings.batch_size)
    for _ in range(settings.epochs):
        if left <= 0:
            return
        order = rng.permutation(num_samples)
        batches = [
            order[start : start + settings.batch_size]
            for start in range(0, num_samples, settings.batch_size)
        ][:left]
        left -= len(batches)
        yield batches


def single_threaded(runtime: str) -> None:
    """One compute thread for ``runtime``'s kernels, for the whole process.

    The models are tiny: threads only add synchronisation, and a device's other core
    belongs to its sensing workload. Measured on digits (one whole-model assignment, a
    2-core x86 machine): the lean runtime took 0.30 s of CPU with OpenBLAS's default
    threads and 0.11 s with one.
    """
    if runtime == "torch":
        import torch

        torch.set_num_threads(1)
    else:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")


def make_trainer(spec: ModelSpec, runtime: str) -> SliceTrainer:
    """The ``runtime``'s model of ``spec``; an unknown name or a model the lean runtime
    cannot express is a ``ValueError`` saying what to set."""
    if runtime == "lean":
        from edge_agent.lean import LeanModel

        return LeanModel(spec)
    if runtime == "torch":
        from edge_agent.trainer import TorchModel

        return TorchModel(spec)
    raise ValueError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
