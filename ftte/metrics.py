"""The metric vocabulary: every name a model's measure may carry, with the range of its values.

Devices report metrics of the global model on their held-out data, and the orchestrator
publishes them in its retained job state, so metric names and values cross the wire from
untrusted senders. They are a fixed vocabulary, decoded strictly (an unknown name is a
refusal, not a new key that removes or drowns the others), and each value is finite and
within its metric's range: fractions in [0, 1], errors in [0, ``MAX_ERROR``].
"""

from __future__ import annotations

import math
from collections.abc import Mapping

# An error (loss, MSE, MAE) above this is no measure of a model worth keeping; the bound
# keeps a hostile report from dominating a fleet average by its size.
MAX_ERROR = 1e9

METRIC_RANGES: dict[str, tuple[float, float]] = {
    "loss": (0.0, MAX_ERROR),  # the objective's own loss (mean per sample)
    "accuracy": (0.0, 1.0),  # classification: share of argmax predictions that are right
    "macro_f1": (0.0, 1.0),  # classification: unweighted mean of per-class F1
    "mse": (0.0, MAX_ERROR),  # regression and reconstruction: mean squared error
    "mae": (0.0, MAX_ERROR),  # regression: mean absolute error
    "auc": (0.0, 1.0),  # reconstruction with anomaly labels: ROC AUC of the anomaly score
}


class MetricError(ValueError):
    """A metric name outside the vocabulary, or a value outside its range."""


def check_metric(name: str, value: float) -> float:
    """``value`` as a float if ``name`` is in the vocabulary and ``value`` in its range."""
    bounds = METRIC_RANGES.get(name)
    if bounds is None:
        shown = name[:32] if isinstance(name, str) else type(name).__name__
        raise MetricError(f"unknown metric {shown!r}: one of {', '.join(METRIC_RANGES)}")
    low, high = bounds
    if not math.isfinite(value) or not low <= value <= high:
        raise MetricError(f"metric {name} = {value} is outside [{low:g}, {high:g}]")
    return float(value)


def check_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """Every metric checked with ``check_metric``."""
    return {name: check_metric(name, value) for name, value in metrics.items()}
