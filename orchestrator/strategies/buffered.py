"""What the buffered strategies share: a buffer of K updates and dispatch of idle devices."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from orchestrator.strategies.base import ReceivedUpdate, Strategy


class BufferedStrategy(Strategy):
    """Buffer updates as they arrive; ready when the buffer holds ``buffer_size``."""

    def __init__(self, buffer_size: int, server_lr: float, max_concurrency: int | None) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        if server_lr <= 0:
            raise ValueError("server_lr must be positive")
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1 (or None for no limit)")
        self.buffer_size = buffer_size
        self.server_lr = server_lr
        self.max_concurrency = max_concurrency
        self._buffer: list[ReceivedUpdate] = []

    def select(self, idle: Sequence[str], in_flight: int, rng: np.random.Generator) -> list[str]:
        """Every idle device, up to the concurrency limit, in random order."""
        room = len(idle) if self.max_concurrency is None else self.max_concurrency - in_flight
        if room <= 0:
            return []
        order = rng.permutation(len(idle))[:room]
        return [idle[i] for i in order]

    def add(self, received: ReceivedUpdate) -> None:
        """Buffer one update."""
        self._buffer.append(received)

    def ready(self) -> bool:
        """The buffer holds K updates."""
        return len(self._buffer) >= self.buffer_size

    def buffered(self) -> list[ReceivedUpdate]:
        """The waiting updates, oldest first."""
        return list(self._buffer)

    def restore(self, buffered: Sequence[ReceivedUpdate]) -> None:
        """Refill the buffer from a checkpoint."""
        self._buffer = list(buffered)

    def _take(self) -> list[ReceivedUpdate]:
        taken, self._buffer = self._buffer, []
        return taken
