"""The one interface every aggregation strategy implements, so a run switches them by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ftte.wire.messages import TensorDict, Update


@dataclass(frozen=True)
class ReceivedUpdate:
    """A validated update and its age: global versions applied since its base version."""

    update: Update
    age: int


@dataclass(frozen=True)
class AggregationReport:
    """What one aggregation did: the weight each buffered update got and the tensors changed."""

    weights: dict[str, float]  # update_id -> staleness/sample weight actually applied
    changed: frozenset[str]
    ages: dict[str, int] = field(default_factory=dict)  # update_id -> age


class Strategy(ABC):
    """Decides whom to dispatch, buffers updates and applies them to the global model.

    The four verbs mirror Flower's strategy interface, adapted to asynchronous arrival:
    ``select`` (configure training), ``add``/``ready``/``aggregate`` (aggregate training).
    Strategies never see transport, clocks or devices' data; the training service (real or
    simulated) calls them.
    """

    name: ClassVar[str]

    @abstractmethod
    def select(self, idle: Sequence[str], in_flight: int, rng: np.random.Generator) -> list[str]:
        """Return the idle devices to dispatch now, given how many are already training."""

    def on_dropout(self, device_id: str) -> None:  # noqa: B027 - optional hook, no-op by default
        """Learn that a dispatched device went away without sending its update."""

    @abstractmethod
    def add(self, received: ReceivedUpdate) -> None:
        """Buffer one validated update."""

    @abstractmethod
    def ready(self) -> bool:
        """Whether ``aggregate`` should run now."""

    @abstractmethod
    def aggregate(self, params: TensorDict) -> AggregationReport:
        """Apply the buffered updates to ``params`` in place and empty the buffer."""

    @abstractmethod
    def buffered(self) -> list[ReceivedUpdate]:
        """The updates waiting in the buffer, oldest first (checkpointed by the service)."""

    @abstractmethod
    def restore(self, buffered: Sequence[ReceivedUpdate], in_flight: int) -> None:
        """Refill the buffer from a checkpoint; ``in_flight`` devices still hold assignments."""
