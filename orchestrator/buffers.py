"""Buffers (batch norms' running statistics): checked on arrival and aggregated beside the
parameters.

A device's update carries the new values of the running statistics its training moved:
those of every batch norm from the slice's first layer on (``ModelSpec.updated_buffers``;
the frozen prefix runs in eval mode and moves none). They are statistics of the data, not
steps of an optimiser, so they aggregate as FedAvg aggregates a model's state: after the
strategy has applied the buffer's deltas, each buffer becomes the sample-weighted mean of the
values the aggregation's updates carry for it,

    b = Σ_{i∈U_b} w_i · b_i / Σ_{i∈U_b} w_i,      w_i = min(n_i, sample cap)

with U_b the aggregated updates that carry b, one per device (its newest). A buffer no
update carries is left bit-for-bit as it was. The bounds of the parameters apply:

- the **sample cap** is the influence bound's (``InfluenceBound.sample_cap``: sample_factor
  × the median of the devices' latest counts, at most max_samples), so a device claiming
  2**53 samples weighs no more than a few honest ones;
- the **robust rule** (``[server] robust_rule``) combines the holders' values through
  ``InfluenceBound.combine`` as it combines deltas: with ``median`` or ``trimmed_mean`` a
  minority of holders cannot move a statistic; with the default ``mean`` a hostile holder
  moves it by its weight share;
- **staleness**: an update older than ``max_staleness`` versions is refused with its
  statistics; a younger one is not discounted by age, because its values are no step taken
  from an old model: they are the old global statistics moved towards the device's data by
  its training (momentum 0.1 per batch), and the mean of those pulls the global statistics
  towards the fleet's data as an exponential moving average, whatever the age;
- values are finite and shaped as the model's (the wire codec), variances are >= 0
  (``check_buffers``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ftte.errors import Rejected, RejectReason
from ftte.wire.messages import TensorDict
from orchestrator.influence import InfluenceBound
from orchestrator.strategies.base import ReceivedUpdate


def check_buffers(buffers: TensorDict) -> None:
    """Refuse statistics no batch norm can hold: a negative running variance."""
    for name, value in buffers.items():
        if name.endswith("running_var") and value.size and float(value.min()) < 0:
            raise Rejected(RejectReason.MALFORMED, f"buffer {name!r} has a negative variance")


def aggregate_buffers(
    buffers: TensorDict, batch: Sequence[ReceivedUpdate], bound: InfluenceBound
) -> frozenset[str]:
    """Set each buffer the ``batch`` carries to the holders' sample-weighted mean (robust
    rule and sample cap of ``bound``) in place; return the names changed.

    Call it after the strategy aggregated ``batch``: the bound then knows its sample counts.
    """
    newest: dict[str, ReceivedUpdate] = {}
    for r in batch:  # oldest first: a device's later update replaces its earlier one
        if r.update.buffers:
            newest[r.update.device_id] = r
    rows = list(newest.values())
    cap = bound.sample_cap()
    changed = set()
    for name in sorted({n for r in rows for n in r.update.buffers}):
        holders = [r for r in rows if name in r.update.buffers]
        current = buffers[name]
        # Values as changes from the global one: the robust rules scale their centre by
        # the coefficients' sum (1 here), so every rule gives a value, not a step.
        stacked = np.stack([(r.update.buffers[name] - current).ravel() for r in holders])
        weights = np.array([min(float(r.update.num_samples), cap) for r in holders])
        step = bound.combine(stacked, weights / weights.sum())
        current += step.reshape(current.shape).astype(np.float32)
        if name.endswith("running_var"):
            np.maximum(current, 0.0, out=current)  # a float rounding below zero is no variance
        changed.add(name)
    return frozenset(changed)
