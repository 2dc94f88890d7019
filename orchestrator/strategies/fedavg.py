"""FedAvg: synchronous rounds over a sample of devices, sample-weighted averaging.

Implementation based on McMahan et al., "Communication-Efficient Learning of Deep Networks
from Decentralized Data", AISTATS 2017 (arXiv:1602.05629).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ftte.wire.messages import TensorDict
from orchestrator.strategies.base import (
    AggregationReport,
    ReceivedUpdate,
    Strategy,
    StrategyState,
    StrategyStateError,
)

if TYPE_CHECKING:
    from orchestrator.influence import InfluenceBound


class FedAvgStrategy(Strategy):
    """Each round samples C idle devices and waits for all of them (or their dropout).

    params += server_lr · Σ_i n_i Δ_i / Σ_i n_i over the round's updates.

    Parameters:
        clients_per_round: C, devices per round (default 10; all idle if fewer).
        server_lr: server learning rate (default 1.0).
        min_available_clients: a round opens only when this many devices are idle (default
            1), as Flower's FedAvg; otherwise the first device to come online at start-up
            gets a round of its own.
    """

    name = "fedavg"

    def __init__(
        self, clients_per_round: int = 10, server_lr: float = 1.0, min_available_clients: int = 1
    ) -> None:
        if clients_per_round < 1:
            raise ValueError("clients_per_round must be at least 1")
        if min_available_clients < 1:
            raise ValueError("min_available_clients must be at least 1")
        if server_lr <= 0:
            raise ValueError("server_lr must be positive")
        self.clients_per_round = clients_per_round
        self.server_lr = server_lr
        self.min_available_clients = min_available_clients
        self._waiting: set[str] = set()
        self._round_open = False
        self._buffer: list[ReceivedUpdate] = []

    def select(self, idle: Sequence[str], in_flight: int, rng: np.random.Generator) -> list[str]:
        """Open a round with C random idle devices, unless one is open."""
        if self._round_open or len(idle) < self.min_available_clients:
            return []
        count = min(self.clients_per_round, len(idle))
        chosen = [idle[i] for i in rng.choice(len(idle), size=count, replace=False)]
        self._waiting = set(chosen)
        self._round_open = True
        return chosen

    def on_dropout(self, device_id: str) -> None:
        """A selected device left: the round stops waiting for it."""
        self._waiting.discard(device_id)

    def add(self, received: ReceivedUpdate) -> None:
        """Accept an update from a device of the open round."""
        device = received.update.device_id
        if device not in self._waiting:
            raise StrategyStateError(f"{device} is not in the open round")
        self._waiting.discard(device)
        self._buffer.append(received)

    def ready(self) -> bool:
        """Every selected device has answered or dropped out."""
        return self._round_open and not self._waiting

    def aggregate(self, params: TensorDict, bound: InfluenceBound) -> AggregationReport:
        """Sample-weighted mean of the round's bounded deltas; closes the round."""
        bounded = bound.apply(self._buffer)
        taken, self._buffer = bounded.updates, []
        self._round_open = False
        total = sum(r.update.num_samples for r in taken)
        names = sorted({n for r in taken for n in r.update.delta})
        for name in names:
            holders = [r for r in taken if name in r.update.delta]
            stacked = bound.stack([r.update.delta[name].ravel() for r in holders])
            coefs = np.array([r.update.num_samples for r in holders], dtype=np.float64)
            step = bound.combine(stacked, coefs * (self.server_lr / total))
            params[name] += step.reshape(params[name].shape).astype(np.float32)
        return AggregationReport(
            weights={r.update.update_id: r.update.num_samples / total for r in taken},
            changed=frozenset(names),
            ages={r.update.update_id: r.age for r in taken},
            clipped=bounded.clipped,
            capped=bounded.capped,
            merged=bounded.merged,
            screened=bounded.screened,
        )

    def buffered(self) -> list[ReceivedUpdate]:
        """Updates of the open round received so far."""
        return list(self._buffer)

    def selection_state(self) -> StrategyState:
        """The open round: whether one is open and whom it waits for."""
        return {"round_open": self._round_open, "waiting": sorted(self._waiting)}

    def load_selection_state(self, state: StrategyState) -> None:
        """Continue the round ``selection_state`` saw, waiting for the same devices."""
        self._round_open = bool(state["round_open"])
        self._waiting = set(state["waiting"])

    def _load_buffer(self, buffer: list[ReceivedUpdate]) -> None:
        self._buffer = buffer
