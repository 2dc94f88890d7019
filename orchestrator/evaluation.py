"""Federated evaluation: the fleet's own measure of each model version, from its devices.

With each update a device reports how the model version it was sent did on a held-out share
of its own data, before training on the rest (``Evaluation`` in the update). The engine adds
the reports of accepted updates per version; a version's fleet metrics are the
sample-weighted means over the devices that reported on it — FedAvg's evaluation, without a
central validation set.

A device could lie about its metrics as about its delta, so each report's sample count is
capped (at ``max_samples``, the influence bound's ceiling) and one device counts once per
version (its newest report replaces an earlier one). Only the newest ``WINDOW`` versions are
kept: the state is O(devices reporting × WINDOW).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ftte.wire.messages import Evaluation

WINDOW = 32  # versions whose reports are kept


@dataclass(frozen=True)
class FleetMetrics:
    """A version's fleet metrics: sample-weighted means over the devices that reported."""

    version: int
    metrics: dict[str, float]
    samples: int
    devices: int


class FleetEvaluation:
    """Reports of accepted updates, per model version."""

    def __init__(self, max_samples: int) -> None:
        self.max_samples = max_samples
        self._reports: dict[int, dict[str, Evaluation]] = {}  # version -> device -> report

    def add(self, version: int, device_id: str, evaluation: Evaluation) -> None:
        """Count ``device_id``'s report on ``version`` (replacing its earlier one)."""
        if self._reports and version < max(self._reports) - WINDOW:
            return  # about a version long gone from the window
        capped = Evaluation(min(evaluation.samples, self.max_samples), evaluation.metrics)
        self._reports.setdefault(version, {})[device_id] = capped
        for old in [v for v in self._reports if v <= max(self._reports) - WINDOW]:
            del self._reports[old]

    def latest(self, min_devices: int = 1) -> FleetMetrics | None:
        """The newest version at least ``min_devices`` devices reported on, if any."""
        for version in sorted(self._reports, reverse=True):
            reports = self._reports[version]
            if len(reports) >= min_devices:
                return _combine(version, reports)
        return None

    def state_dict(self) -> dict[str, Any]:
        """The reports in the window, for the engine's checkpoint."""
        return {
            str(version): {d: [e.samples, e.metrics] for d, e in reports.items()}
            for version, reports in self._reports.items()
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict``."""
        self._reports = {
            int(version): {d: Evaluation(int(n), dict(m)) for d, (n, m) in reports.items()}
            for version, reports in state.items()
        }


def _combine(version: int, reports: dict[str, Evaluation]) -> FleetMetrics:
    """Sample-weighted means of the metrics every report names."""
    samples = sum(e.samples for e in reports.values())
    names = set.intersection(*(set(e.metrics) for e in reports.values()))
    metrics = {
        name: sum(e.samples * e.metrics[name] for e in reports.values()) / samples
        for name in sorted(names)
    }
    return FleetMetrics(version, metrics, samples, len(reports))
