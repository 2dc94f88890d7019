"""A device's model copy and the step from an assignment to an update.

Shared by the simulator and the MQTT agent: the device keeps the global values it was last
sent, applies the tensors an assignment carries, trains the slice with its runtime
(``edge_agent.runtime``) and builds the update.
"""

from __future__ import annotations

import uuid

from edge_agent.runtime import REFERENCE, SliceTrainer, TrainResult, make_trainer
from ftte.tasks.base import Dataset, ModelSpec
from ftte.wire.messages import Assignment, Update


class DeviceModel:
    """The device's copy of the global model and the version it corresponds to."""

    def __init__(self, spec: ModelSpec, runtime: str = REFERENCE) -> None:
        self.trainer: SliceTrainer = make_trainer(spec, runtime)
        self.shapes = self.trainer.parameter_shapes() | self.trainer.buffer_shapes()
        self.version = -1
        self.job: str | None = None  # whose model ``version`` counts versions of

    def apply(self, assignment: Assignment) -> None:
        """Load the tensors an assignment carries and adopt its job and version."""
        unknown = assignment.tensors.keys() - self.shapes.keys()
        if unknown:
            raise ValueError(f"assignment names tensors this model lacks: {sorted(unknown)}")
        for name, value in assignment.tensors.items():
            if value.shape != self.shapes[name]:
                raise ValueError(f"tensor {name}: shape {value.shape} != {self.shapes[name]}")
        self.trainer.load(assignment.tensors)
        self.version = assignment.version
        self.job = assignment.job

    def train(
        self,
        assignment: Assignment,
        data: Dataset,
        seed: int,
        update_id: str | None = None,
        held_out: Dataset | None = None,
    ) -> tuple[Update, TrainResult]:
        """Apply ``assignment``, measure the model it brings on ``held_out`` (federated
        evaluation, if the device holds data out), train its slice on ``data`` and build the
        update.

        ``update_id`` defaults to a random UUID; the simulator passes its own so that runs
        (and so payload sizes and virtual times) repeat exactly for a seed.
        """
        self.apply(assignment)
        evaluation = (
            self.trainer.evaluate(held_out) if held_out is not None and len(held_out) else None
        )
        result = self.trainer.train(assignment.trainable, data, assignment.train, seed)
        update = assignment.answer(
            result.delta,
            result.num_samples,
            result.loss,
            result.peak_mem_bytes,
            update_id=update_id or uuid.uuid4().hex,
            evaluation=evaluation,
            buffers=result.buffers,
        )
        return update, result
