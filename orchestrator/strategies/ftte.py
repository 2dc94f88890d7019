"""FTTE: buffered semi-asynchronous aggregation of sparse slices with age+variance weights.

Implementation based on Tenison et al., "FTTE: Federated Tiny Training Engine" (arXiv
2510.03165), from its abstract: updates are buffered and applied when K are present, each
weighted by its staleness (age) and its variance. The paper's body is not public to us; the
per-tensor averaging and the weight form below are our documented choices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ftte.wire.messages import TensorDict
from orchestrator.staleness import AgeVarianceStaleness
from orchestrator.strategies.base import AggregationReport
from orchestrator.strategies.buffered import BufferedStrategy

if TYPE_CHECKING:
    from orchestrator.influence import InfluenceBound


class FTTEStrategy(BufferedStrategy):
    """Per-tensor averaging over the buffered updates that contain each tensor.

    For tensor p, with U_p the buffered updates containing p, n_i their sample counts,
    r_ip = Var(Δ_ip) / mean_{j∈U_p} Var(Δ_jp) and s the staleness weight:

        Δ_p = Σ_{i∈U_p} s(age_i, r_ip) · n_i · Δ_ip / Σ_{i∈U_p} n_i
        params[p] += server_lr · Δ_p

    A site gateway's combined update is one row whose Δ_p is its members' n-weighted mean
    and whose n is their sample sum for p (``ReceivedUpdate.samples``): the sum above is
    the same as with the members apart, except that the variance ratio r is the row's.

    Normalising by samples rather than by the weights themselves means a stale or noisy
    update shrinks the step instead of being renormalised back to full strength; tensors no
    update touched are left bit-for-bit as they were.

    Parameters:
        buffer_size: the smallest K, updates per aggregation (default 10).
        buffer_fraction: K grows to this fraction of the devices training (default 0.1).
        server_lr: server learning rate (default 1.0).
        staleness_exponent: a in the age decay (1 + age)^-a (default 0.5).
        variance_coef: b in the variance penalty 1 + b · max(0, r − 1) (default 0.5).
        max_concurrency: devices training at once; None dispatches every idle device.
    """

    name = "ftte"
    combines_site_rows = True

    def __init__(
        self,
        buffer_size: int = 10,
        server_lr: float = 1.0,
        staleness_exponent: float = 0.5,
        variance_coef: float = 0.5,
        max_concurrency: int | None = None,
        buffer_fraction: float = 0.1,
    ) -> None:
        super().__init__(buffer_size, server_lr, max_concurrency, buffer_fraction)
        self.staleness = AgeVarianceStaleness(staleness_exponent, variance_coef)

    def aggregate(self, params: TensorDict, bound: InfluenceBound) -> AggregationReport:
        """Apply the bounded buffer tensor by tensor; report each update's mean weight."""
        taken = self._take()
        # A site's row was bounded per device at its gateway; the fleet's medians are of
        # devices, so it does not enter them.
        sites = [r for r in taken if r.tensor_samples is not None]
        devices = [r for r in taken if r.tensor_samples is None]
        bounded = bound.apply(devices) if devices else None  # no medians of nothing
        taken = (bounded.updates if bounded else []) + sites
        per_update: dict[str, list[float]] = {r.update.update_id: [] for r in taken}
        # The age factor is per row; the variance penalty per (row, tensor), taken for all
        # of a tensor's holders in one array operation: the models are small, so per-call
        # overhead, not arithmetic, bounds the aggregator's throughput.
        decay = np.array([self.staleness.decay(r.age) for r in taken])
        names = sorted({n for r in taken for n in r.update.delta})
        for name in names:
            held = [i for i, r in enumerate(taken) if name in r.update.delta]
            holders = [taken[i] for i in held]
            stacked = bound.stack([r.update.delta[name].ravel() for r in holders])
            variances = stacked.var(axis=1, dtype=np.float64)
            mean_var = float(variances.mean())
            if mean_var > 0 and len(holders) > 1:
                weights = decay[held] / self.staleness.penalty(variances / mean_var)
            else:
                weights = decay[held]  # a penalty of exactly 1
            for r, s in zip(holders, weights.tolist(), strict=True):
                per_update[r.update.update_id].append(s)
            counts = [r.samples(name) for r in holders]
            weighted = weights * np.array(counts, dtype=np.float64)
            step = bound.combine(stacked, weighted * (self.server_lr / sum(counts)))
            params[name] += step.reshape(params[name].shape).astype(np.float32)
        return AggregationReport(
            weights={uid: float(np.mean(w)) for uid, w in per_update.items()},
            changed=frozenset(names),
            ages={r.update.update_id: r.age for r in taken},
            clipped=bounded.clipped if bounded else frozenset(),
            capped=bounded.capped if bounded else frozenset(),
            merged=bounded.merged if bounded else frozenset(),
            screened=bounded.screened if bounded else frozenset(),
        )
