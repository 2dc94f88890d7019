"""The job's local-training settings (``[train]`` in job and simulation configs).

The one home of their defaults. The server adds what only it decides (the wire encoding of
deltas, set by the preset, and the micro-batch, set per device by the planner) to form the
``TrainConfig`` an assignment carries; a user cannot set those, so nothing they write is
silently overwritten.

The optimizer lives for one assignment: each one trains a fresh slice from the global model,
so SGD's momentum buffers and Adam's moments start at zero and are dropped with the delta.
Carrying them across assignments would need the device to keep state for tensors it may
not train next (the planner moves slices) and would be stale against the global model the
next assignment starts from. ``epochs`` local epochs of steps (at most ``steps`` of them)
are what the state spans.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# Adam's constants are torch.optim.Adam's defaults, fixed rather than settings: no shipped
# task needed others, and both runtimes must agree on them.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


class Optimizer(StrEnum):
    """The local optimizer of every device of a job."""

    SGD = "sgd"  # torch.optim.SGD, with ``momentum`` when it is above 0
    ADAM = "adam"  # torch.optim.Adam with ADAM_BETAS and ADAM_EPS, no weight decay


@dataclass(frozen=True)
class TrainSettings:
    """Local training hyper-parameters, the same for every device of a job."""

    # Both tuned in the simulator for every strategy alike (docs/benchmarks.md): 3 epochs
    # gave FedAvg its best median time and helped FedBuff and ftte too.
    epochs: int = 3
    batch_size: int = 32
    lr: float = 0.2
    optimizer: Optimizer = Optimizer.SGD
    momentum: float = 0.0  # SGD's; Adam's moments follow ADAM_BETAS
    # Each step's gradient norm over the slice is clipped to this (0: no clipping). One
    # device with a skewed partition can otherwise blow up at a learning rate that suits
    # the fleet (seen on vibration at 3 epochs); clipping is applied by every strategy alike.
    clip_norm: float = 5.0
    # At most this many local steps (batches) per assignment, across its epochs; 0: every
    # batch of every epoch. On heterogeneous devices most of a long local run pulls the
    # model toward the device's own data and is averaged away (client drift): on the pump
    # autoencoder (5 pumps, Adam) 10 steps per assignment reached the same held-out MSE per
    # round as 2 epochs (38 steps), for a quarter of the compute (docs/benchmarks.md).
    steps: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError("epochs must be at least 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not self.lr > 0:
            raise ValueError("lr must be positive")
        if not 0 <= self.momentum < 1:
            raise ValueError("momentum must be in [0, 1)")
        if self.optimizer is Optimizer.ADAM and self.momentum != 0:
            raise ValueError(
                'momentum is SGD\'s: set momentum = 0 with optimizer = "adam" '
                f"(its moments use betas {ADAM_BETAS})"
            )
        if self.clip_norm < 0:
            raise ValueError("clip_norm must be >= 0 (0: no clipping)")
        if self.steps < 0:
            raise ValueError("steps must be >= 0 (0: every batch of every epoch)")

    @property
    def optimizer_slots(self) -> int:
        """Optimizer state values kept per trained value: Adam's two moments, SGD's
        momentum buffer when it has momentum, else none."""
        if self.optimizer is Optimizer.ADAM:
            return 2
        return 1 if self.momentum > 0 else 0
