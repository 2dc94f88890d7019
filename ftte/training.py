"""The job's local-training settings (``[train]`` in job and simulation configs).

The one home of their defaults. The server adds what only it decides (the wire encoding of
deltas, set by the preset, and the micro-batch, set per device by the planner) to form the
``TrainConfig`` an assignment carries; a user cannot set those, so nothing they write is
silently overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainSettings:
    """Local training hyper-parameters, the same for every device of a job."""

    # Both tuned in the simulator for every strategy alike (docs/benchmarks.md): 3 epochs
    # gave FedAvg its best median time and helped FedBuff and ftte too.
    epochs: int = 3
    batch_size: int = 32
    lr: float = 0.2
    momentum: float = 0.0
    # Each step's gradient norm over the slice is clipped to this (0: no clipping). One
    # device with a skewed partition can otherwise blow up at a learning rate that suits
    # the fleet (seen on vibration at 3 epochs); clipping is applied by every strategy alike.
    clip_norm: float = 5.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError("epochs must be at least 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not self.lr > 0:
            raise ValueError("lr must be positive")
        if not 0 <= self.momentum < 1:
            raise ValueError("momentum must be in [0, 1)")
        if self.clip_norm < 0:
            raise ValueError("clip_norm must be >= 0 (0: no clipping)")
