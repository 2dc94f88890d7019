"""What a task is: a model spec and its objective (shared by orchestrator and devices),
apart from its data.

A device needs only the ``ModelSpec`` (architecture and objective) and its own data; the
task's per-device partitions and optional validation set exist for the simulator, the
benchmarks and the orchestrator.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ftte.tasks.layers import Layer, buffer_shapes, parameter_shapes, updated_buffers
from ftte.tasks.objectives import CLASSIFICATION, Objective

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Dataset:
    """Samples and their targets: ``x`` float32 with shape (n, *input_shape); ``y`` of the
    objective's kind (``ftte.tasks.objectives``): int64 class ids, float32 target values,
    or int64 anomaly labels (-1 when unknown)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class ModelSpec:
    """The architecture everyone shares: its layers, the input it takes, its objective.

    ``layers`` is the one description of the model (``ftte.tasks.layers``); the torch model
    and the device's lean model are both built from it, with the same parameter names.
    ``objective`` is what it learns and how it is measured; ``num_classes`` counts the
    classes of a classification model (unused by the other objectives).
    """

    name: str
    layers: tuple[Layer, ...]
    input_shape: tuple[int, ...]
    num_classes: int = 0
    objective: Objective = CLASSIFICATION

    def __post_init__(self) -> None:
        if self.objective is CLASSIFICATION and self.num_classes < 2:
            raise ValueError(
                f"model {self.name!r}: a classification model needs num_classes >= 2; for "
                "real-valued outputs set objective=REGRESSION, for an autoencoder "
                "objective=RECONSTRUCTION (ftte.tasks.objectives)"
            )

    def make_model(self) -> nn.Sequential:
        """A fresh torch ``nn.Sequential``; after ``torch.manual_seed(s)`` the same weights
        for the same ``s`` (the planner orders layers by position)."""
        # Imported here: a device on the lean runtime reads the spec without torch.
        from ftte.tasks.torch_model import build_torch_model

        return build_torch_model(self.layers)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter names and shapes, as torch's ``named_parameters`` would list them."""
        return parameter_shapes(self.layers)

    def buffer_shapes(self) -> dict[str, tuple[int, ...]]:
        """Buffer names and shapes (batch norms' running statistics), as torch names them."""
        return buffer_shapes(self.layers)

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of the model's state: parameters, then buffers."""
        return self.parameter_shapes() | self.buffer_shapes()

    def updated_buffers(self, trainable: Collection[str]) -> tuple[str, ...]:
        """The buffers training the slice ``trainable`` updates (``layers.updated_buffers``)."""
        return updated_buffers(self.layers, min(int(n.split(".", 1)[0]) for n in trainable))


@dataclass(frozen=True)
class Task:
    """A federated learning task, loaded entirely offline: a model spec and its data.

    ``target`` is the value of the objective's primary metric a job stops at (e.g. accuracy
    0.9, or an MSE of 0.02); ``validation`` is optional: without it, jobs measure the model
    on the devices' held-out data (federated evaluation).
    """

    model: ModelSpec
    devices: list[Dataset]  # one partition per (simulated or demo) device
    validation: Dataset | None
    target: float

    @property
    def name(self) -> str:
        """The task's name (its model spec's)."""
        return self.model.name

    @property
    def objective(self) -> Objective:
        """What the model learns and how it is measured (its model spec's)."""
        return self.model.objective


def hold_out(data: Dataset, fraction: float) -> tuple[Dataset, Dataset]:
    """``data`` split into (train, held out), about ``fraction`` held out.

    Each sample's side is decided by a hash of its values, not its position: a logger's
    data grows and its oldest windows fall out of the sample cap, and a window must not
    move from evaluation into training as they do.
    """
    if fraction <= 0 or not len(data):
        return data, Dataset(data.x[:0], data.y[:0])
    rows = data.x.reshape(len(data), -1)
    held = np.array([zlib.crc32(row.tobytes()) % 1000 < fraction * 1000 for row in rows])
    return Dataset(data.x[~held], data.y[~held]), Dataset(data.x[held], data.y[held])


def check_dataset(data: Dataset, model: ModelSpec, source: str) -> None:
    """Refuse data the model cannot train on under its objective, naming ``source`` and the
    fix."""
    model.objective.check(data, model, source)


TaskFactory = Callable[..., Task]
"""Signature of a task factory: ``factory(num_devices: int, seed: int, alpha: float) -> Task``."""
