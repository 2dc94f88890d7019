"""The one interface every aggregation strategy implements, so a run switches them by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ftte.wire import decode_update, encode_update
from ftte.wire.messages import DeltaEncoding, TensorDict, Update

if TYPE_CHECKING:
    from orchestrator.influence import InfluenceBound

StrategyState = dict[str, Any]
"""A strategy's ``state_dict``: msgpack-able values (str, int, float, bool, bytes, lists, dicts)."""


class StrategyStateError(RuntimeError):
    """The strategy was handed an update its own state says it never asked for.

    The server only passes on updates that answer an open assignment the strategy chose, so
    this is a bug in a driver or in restored state, never a device's doing; the service's
    per-message boundary counts it and sets the message aside.
    """


@dataclass(frozen=True)
class ReceivedUpdate:
    """A validated update and its age: global versions applied since its base version."""

    update: Update
    age: int
    # A site's combined update (orchestrator.gateway) as one row: ``update.delta`` holds
    # each tensor's sample-weighted mean over the members holding it and
    # ``tensor_samples`` their sample sum per tensor. It was bounded per device at the
    # gateway and counts as its ``members`` updates toward K.
    tensor_samples: Mapping[str, int] | None = None
    members: int = 1

    def samples(self, name: str) -> int:
        """The sample count this row weighs tensor ``name`` with."""
        if self.tensor_samples is None:
            return self.update.num_samples
        return self.tensor_samples[name]


@dataclass(frozen=True)
class AggregationReport:
    """What one aggregation did: the weight each buffered update got and the tensors changed."""

    weights: dict[str, float]  # update_id -> staleness/sample weight actually applied
    changed: frozenset[str]
    ages: dict[str, int] = field(default_factory=dict)  # update_id -> age
    clipped: frozenset[str] = frozenset()  # update ids with a delta clipped in norm
    capped: frozenset[str] = frozenset()  # update ids whose sample count was capped
    merged: frozenset[str] = frozenset()  # update ids folded into a newer one of their device
    screened: frozenset[str] = frozenset()  # update ids left out by the direction screen


class Strategy(ABC):
    """Decides whom to dispatch, buffers updates and applies them to the global model.

    The verbs mirror Flower's strategy interface, adapted to asynchronous arrival:
    ``select`` (configure training), ``add``/``ready``/``aggregate`` (aggregate training).
    Strategies never see transport, clocks or devices' data; the training server calls
    them. Contract: ``add`` raises only ``StrategyStateError``, ``aggregate`` never raises
    on a non-empty buffer, and ``load_state_dict(state_dict())`` gives a strategy that
    behaves exactly as the original from then on.
    """

    name: ClassVar[str]
    # Whether ``aggregate`` takes a site's combined update as a row (``ReceivedUpdate``
    # with ``tensor_samples``); only rules additive over devices can.
    combines_site_rows: ClassVar[bool] = False

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
    def aggregate(self, params: TensorDict, bound: InfluenceBound) -> AggregationReport:
        """Apply the buffered updates to ``params`` in place and empty the buffer.

        Every strategy bounds the buffer with ``bound.apply`` first and combines each
        tensor's holders with ``bound.combine``: one policy on what an update can do.
        """

    @abstractmethod
    def buffered(self) -> list[ReceivedUpdate]:
        """The updates waiting in the buffer, oldest first."""

    @abstractmethod
    def selection_state(self) -> StrategyState:
        """What ``select`` changes (small: journaled with every dispatch)."""

    @abstractmethod
    def load_selection_state(self, state: StrategyState) -> None:
        """Continue from a ``selection_state`` (replaying a journaled dispatch)."""

    def state_dict(self) -> StrategyState:
        """Everything needed to continue after a restart: the selection and the buffer."""
        return {**self.selection_state(), "buffer": buffer_state(self.buffered())}

    def load_state_dict(self, state: StrategyState) -> None:
        """Continue from a ``state_dict`` of a strategy of the same class and parameters."""
        self.load_selection_state(state)
        self._load_buffer(load_buffer_state(state["buffer"]))

    @abstractmethod
    def _load_buffer(self, buffer: list[ReceivedUpdate]) -> None:
        """Replace the buffer (from a checkpoint)."""


def buffer_state(buffer: Sequence[ReceivedUpdate]) -> list[dict[str, Any]]:
    """Buffered updates as checkpointable values (the wire codec's lossless float32 form)."""
    return [_row_state(r) for r in buffer]


def _row_state(r: ReceivedUpdate) -> dict[str, Any]:
    state = {"update": encode_update(r.update, DeltaEncoding.FLOAT32), "age": r.age}
    if r.tensor_samples is not None:
        state |= {"tensor_samples": dict(r.tensor_samples), "members": r.members}
    return state


def load_buffer_state(entries: Sequence[dict[str, Any]]) -> list[ReceivedUpdate]:
    """The inverse of ``buffer_state``."""
    return [
        ReceivedUpdate(
            decode_update(e["update"]),
            int(e["age"]),
            e.get("tensor_samples"),
            int(e.get("members", 1)),
        )
        for e in entries
    ]
