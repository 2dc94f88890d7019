"""FedBuff: buffered asynchronous aggregation of full-model updates.

Implementation based on Nguyen et al., "Federated Learning with Buffered Asynchronous
Aggregation", AISTATS 2022 (arXiv:2106.06639), as in Meta's FLSim and Flower.
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


class FedBuffStrategy(BufferedStrategy):
    """Δ̄ = (1/K) Σ_i s(age_i) Δ_i; params += server_lr · Δ̄, with s(age) = 1/sqrt(1 + age).

    An update lacking a tensor contributes zero to it (FedBuff assumes full-model updates).

    Parameters:
        buffer_size: the smallest K, updates per aggregation (default 10).
        buffer_fraction: K grows to this fraction of the devices training (default 0.1).
        server_lr: server learning rate (default 1.0).
        staleness_exponent: a in the staleness weight (1 + age)^-a (default 0.5).
        max_concurrency: devices training at once; None dispatches every idle device.
    """

    name = "fedbuff"

    def __init__(
        self,
        buffer_size: int = 10,
        server_lr: float = 1.0,
        staleness_exponent: float = 0.5,
        max_concurrency: int | None = None,
        buffer_fraction: float = 0.1,
    ) -> None:
        super().__init__(buffer_size, server_lr, max_concurrency, buffer_fraction)
        self.staleness = PolynomialStaleness(staleness_exponent)

    def aggregate(self, params: TensorDict, bound: InfluenceBound) -> AggregationReport:
        """Average the bounded, staleness-weighted deltas over K and apply them."""
        bounded = bound.apply(self._take())
        taken = bounded.updates
        weights = {r.update.update_id: self.staleness(r.age, 1.0) for r in taken}
        names = sorted({n for r in taken for n in r.update.delta})
        for name in names:
            holders = [r for r in taken if name in r.update.delta]
            stacked = bound.stack([r.update.delta[name].ravel() for r in holders])
            coefs = np.array([weights[r.update.update_id] for r in holders])
            step = bound.combine(stacked, coefs * (self.server_lr / len(taken)))
            params[name] += step.reshape(params[name].shape).astype(np.float32)
        return AggregationReport(
            weights=weights,
            changed=frozenset(names),
            ages={r.update.update_id: r.age for r in taken},
            clipped=bounded.clipped,
            capped=bounded.capped,
            merged=bounded.merged,
            screened=bounded.screened,
        )
