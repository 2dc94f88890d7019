"""Federated evaluation: the fleet's own measure of the model, from its devices.

With each update a device reports how the model version it was sent did on a held-out share
of its own data, before training on the rest (``Evaluation`` in the update). Versions move
on with every aggregation, faster than every device can report on each one, so the fleet's
measure is taken over the devices' newest reports: those on one of the ``SPAN`` newest
versions reported on, sample-weighted — FedAvg's evaluation, without a central validation
set, over a model that changed little between those versions.

A device could lie about its metrics as about its delta, so each report's sample count is
capped (at ``max_samples``, the influence bound's ceiling), a device counts once (its
newest report replaces the one before), and the decoder has already refused names outside
the metric vocabulary and values outside their ranges (``ftte.metrics``). Each metric is
averaged over the devices that reported it, weighted by their samples: a device that leaves
one out (``auc`` needs anomaly labels, which not every device has) neither removes it from
the fleet's measure nor pulls it toward zero. The state is one report per device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ftte.wire.messages import Evaluation

SPAN = 10  # versions: a report on one older than the newest reported minus this is left out


@dataclass(frozen=True)
class FleetMetrics:
    """The fleet's measure: sample-weighted means over the devices' newest reports."""

    version: int  # the newest version reported on
    metrics: dict[str, float]  # each over the devices that reported it
    samples: int  # over every device counted
    devices: int
    by_device: dict[str, Evaluation] = field(default_factory=dict)  # the reports counted

    def by_device_of(self, metric: str) -> dict[str, tuple[int, float]]:
        """Each counted device's (samples, value) of ``metric``, if it reported it: what
        releases compare on (``orchestrator.releases``)."""
        return {
            d: (e.samples, e.metrics[metric])
            for d, e in self.by_device.items()
            if metric in e.metrics
        }


class FleetEvaluation:
    """The newest report of each device whose update was accepted."""

    def __init__(self, max_samples: int) -> None:
        self.max_samples = max_samples
        self._reports: dict[str, tuple[int, Evaluation]] = {}  # device -> (version, report)

    def add(self, version: int, device_id: str, evaluation: Evaluation) -> None:
        """Count ``device_id``'s report on ``version`` (its newest replaces the one before)."""
        held = self._reports.get(device_id)
        if held is not None and held[0] > version:
            return  # an older answer arriving late
        capped = Evaluation(min(evaluation.samples, self.max_samples), evaluation.metrics)
        self._reports[device_id] = (version, capped)

    def latest(self, min_devices: int = 1) -> FleetMetrics | None:
        """The measure over reports on the ``SPAN`` newest versions, if at least
        ``min_devices`` devices made one."""
        if not self._reports:
            return None
        newest = max(version for version, _ in self._reports.values())
        counted = {d: e for d, (v, e) in self._reports.items() if v >= newest - SPAN}
        recent = list(counted.values())
        if len(recent) < min_devices:
            return None
        weighted: dict[str, float] = {}
        weights: dict[str, int] = {}
        for e in recent:
            for name, value in e.metrics.items():
                weighted[name] = weighted.get(name, 0.0) + e.samples * value
                weights[name] = weights.get(name, 0) + e.samples
        metrics = {name: weighted[name] / weights[name] for name in sorted(weighted)}
        samples = sum(e.samples for e in recent)
        return FleetMetrics(newest, metrics, samples, len(recent), counted)

    def state_dict(self) -> dict[str, Any]:
        """The reports, for the engine's checkpoint."""
        return {d: [v, e.samples, e.metrics] for d, (v, e) in self._reports.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict``."""
        self._reports = {d: (int(v), Evaluation(int(n), dict(m))) for d, (v, n, m) in state.items()}
