"""Message schemas that cross the wire: assignments (server to device) and updates (back)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from ftte.training import TrainSettings

TensorDict = dict[str, np.ndarray]


class DeltaEncoding(StrEnum):
    """How an update's delta tensors are quantised on the wire."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    INT8 = "int8"  # symmetric, one float32 scale per tensor


@dataclass(frozen=True)
class TrainConfig(TrainSettings):
    """What an assignment says about training: the job's settings plus the server's choices."""

    delta_encoding: DeltaEncoding = DeltaEncoding.FLOAT32
    # Set per device by the planner: gradients of each batch are accumulated over chunks of
    # this many samples, so activations need a quarter of the memory at a quarter of the
    # batch while the update stays the same. 0: the whole batch at once.
    micro_batch: int = 0


@dataclass(frozen=True)
class Assignment:
    """Server to device: the slice to train and the model values the device lacks.

    ``tensors`` holds the current values of every tensor that changed since the model
    version the device last received (all tensors when that is unknown); the device keeps
    its copy of the rest. ``trainable`` names the slice; every other tensor stays frozen.
    Buffers (batch norms' running statistics) travel in ``tensors`` like parameters.
    """

    job: str
    device_id: str
    assignment_id: str
    version: int
    trainable: tuple[str, ...]
    tensors: TensorDict
    train: TrainConfig = field(default_factory=TrainConfig)

    def answer(
        self,
        delta: TensorDict,
        num_samples: int,
        loss: float,
        peak_mem_bytes: int,
        update_id: str | None = None,
        evaluation: Evaluation | None = None,
        process: ProcessMemory | None = None,
        buffers: TensorDict | None = None,
    ) -> Update:
        """The update answering this assignment with ``delta`` (update id: ``{id}.u``)."""
        return Update(
            device_id=self.device_id,
            update_id=update_id or f"{self.assignment_id}.u",
            assignment_id=self.assignment_id,
            base_version=self.version,
            num_samples=num_samples,
            loss=loss,
            peak_mem_bytes=peak_mem_bytes,
            delta=delta,
            evaluation=evaluation,
            process=process,
            buffers=buffers or {},
        )


@dataclass(frozen=True)
class Evaluation:
    """How the model a device was sent did on the device's held-out data, before training:
    metric name to value (``loss``, ``accuracy``), over ``samples`` held-out samples."""

    samples: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class ProcessMemory:
    """What the whole agent process held, from ``/proc/self/status``, when it sent an update.

    ``rss_peak_bytes`` is VmHWM (the process's resident high-water mark since it started),
    ``rss_anon_bytes`` is RssAnon (resident anonymous memory: heap and arrays, not the
    shared libraries' pages, which other processes may share).
    """

    rss_peak_bytes: int
    rss_anon_bytes: int


@dataclass(frozen=True)
class Update:
    """Device to server: the delta of exactly the assigned slice, trained from ``base_version``."""

    device_id: str
    update_id: str
    assignment_id: str
    base_version: int
    num_samples: int
    loss: float
    peak_mem_bytes: int
    delta: TensorDict
    evaluation: Evaluation | None = None  # of the model at base_version, if the device has one
    process: ProcessMemory | None = None  # None from agents before the field existed
    # New values (not deltas) of the running statistics training moved: those of every
    # batch norm from the slice's first layer on (``ModelSpec.updated_buffers``).
    buffers: TensorDict = field(default_factory=dict)


@dataclass(frozen=True)
class Release:
    """A trained model as the fleet receives and keeps it: the values of every tensor of the
    job's model (parameters and buffers, by torch's names), what it scored, and where it
    came from.

    ``model`` names the architecture (the task's model spec); a device refuses a release
    of another model than its own.
    """

    job: str
    version: int
    model: str
    metrics: dict[str, float]
    tensors: TensorDict
    created_unix_s: float


@dataclass(frozen=True)
class SiteMember:
    """One device update folded into a site's combined update: whose answer to which
    assignment it was, and the (bounded) sample count it was weighted with."""

    device_id: str
    assignment_id: str
    update_id: str
    num_samples: int


@dataclass(frozen=True)
class CombinedUpdate:
    """Site gateway to server: its devices' updates of one base version, summed.

    For each tensor p, ``sums[p]`` = Σ n_i · Δ_ip and ``weights[p]`` = Σ n_i over the
    members i whose slice holds p (n_i the member's bounded sample count): the terms of
    FTTE's per-tensor weighted mean, which add up across devices. Members share
    ``base_version``, hence their staleness weight.
    """

    site: str
    combined_id: str
    base_version: int
    members: tuple[SiteMember, ...]
    sums: TensorDict
    weights: dict[str, int]
    loss: float  # the members' sample-weighted mean training loss
