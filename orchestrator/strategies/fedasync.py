"""FedAsync: every update applied on arrival, damped by its staleness.

Implementation based on Xie, Koyejo and Gupta, "Asynchronous Federated Optimization"
(arXiv:1903.03934), with the polynomial staleness function.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ftte.wire.messages import TensorDict
from orchestrator.staleness import PolynomialStaleness
from orchestrator.strategies.base import AggregationReport
from orchestrator.strategies.buffered import BufferedStrategy

if TYPE_CHECKING:
    from orchestrator.influence import InfluenceBound


class FedAsyncStrategy(BufferedStrategy):
    """params += α · s(age) · Δ for each update as it arrives (α = 0.6, s = (1+age)^-0.5).

    Mixing x ← (1 − α_t) x + α_t x_new with x_new = x_base + Δ is, against the current
    model, this delta form (the server never holds x_base of every device).

    Parameters:
        alpha: mixing weight α (default 0.6).
        staleness_exponent: a in the staleness weight (1 + age)^-a (default 0.5).
        max_concurrency: devices training at once; None dispatches every idle device.
    """

    name = "fedasync"

    def __init__(
        self,
        alpha: float = 0.6,
        staleness_exponent: float = 0.5,
        max_concurrency: int | None = None,
    ) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        super().__init__(1, alpha, max_concurrency, buffer_fraction=0.0)  # K = 1: no buffer
        self.staleness = PolynomialStaleness(staleness_exponent)

    def aggregate(self, params: TensorDict, bound: InfluenceBound) -> AggregationReport:
        """Apply the one waiting update, bounded."""
        bounded = bound.apply(self._take())
        taken = bounded.updates
        weights = {}
        for r in taken:
            w = self.server_lr * self.staleness(r.age, 1.0)
            weights[r.update.update_id] = w
            for name, delta in r.update.delta.items():
                params[name] += (w * delta).astype(np.float32)
        return AggregationReport(
            weights=weights,
            changed=frozenset(n for r in taken for n in r.update.delta),
            ages={r.update.update_id: r.age for r in taken},
            clipped=bounded.clipped,
            capped=bounded.capped,
            merged=bounded.merged,
            screened=bounded.screened,
        )
