"""A device's model copy and the step from an assignment to an update.

Shared by the simulator and the MQTT agent: the device keeps the global values it was last
sent, applies the tensors an assignment carries, trains the slice and builds the update.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import torch
from torch import nn

from edge_agent.trainer import TrainResult, train_slice
from ftte.tasks.base import Dataset
from ftte.wire.messages import Assignment, Update


class DeviceModel:
    """The device's copy of the global model and the version it corresponds to."""

    def __init__(self, make_model: Callable[[], nn.Sequential]) -> None:
        self.model = make_model()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.params = dict(self.model.named_parameters())
        self.version = -1
        self.job: str | None = None  # whose model ``version`` counts versions of

    def apply(self, assignment: Assignment) -> None:
        """Load the tensors an assignment carries and adopt its job and version."""
        unknown = assignment.tensors.keys() - self.params.keys()
        if unknown:
            raise ValueError(f"assignment names tensors this model lacks: {sorted(unknown)}")
        with torch.no_grad():
            for name, value in assignment.tensors.items():
                self.params[name].copy_(torch.from_numpy(value))
        self.version = assignment.version
        self.job = assignment.job

    def train(
        self, assignment: Assignment, data: Dataset, seed: int, update_id: str | None = None
    ) -> tuple[Update, TrainResult]:
        """Apply ``assignment``, train its slice on ``data`` and build the update.

        ``update_id`` defaults to a random UUID; the simulator passes its own so that runs
        (and so payload sizes and virtual times) repeat exactly for a seed.
        """
        self.apply(assignment)
        result = train_slice(self.model, assignment.trainable, data, assignment.train, seed)
        update = assignment.answer(
            result.delta,
            result.num_samples,
            result.loss,
            result.peak_mem_bytes,
            update_id=update_id or uuid.uuid4().hex,
        )
        return update, result
