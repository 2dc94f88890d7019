"""Named training setups: a strategy with the slice mode and delta encoding it is run with.

The baselines train the full model and send float32 deltas, as their papers do; ftte trains
per-device slices and sends int8 deltas. ``ftte-weakest`` is the FTTE paper's single subset
sized for the weakest device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ftte.wire.messages import DeltaEncoding
from orchestrator.planner import PlanMode


@dataclass(frozen=True)
class Preset:
    """A strategy name, its parameters, the slice mode and the delta encoding."""

    strategy: str
    plan_mode: PlanMode
    delta_encoding: DeltaEncoding
    params: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "ftte": Preset("ftte", PlanMode.PER_DEVICE, DeltaEncoding.INT8),
    "ftte-weakest": Preset("ftte", PlanMode.WEAKEST, DeltaEncoding.INT8),
    "fedbuff": Preset("fedbuff", PlanMode.FULL, DeltaEncoding.FLOAT32),
    "fedavg": Preset("fedavg", PlanMode.FULL, DeltaEncoding.FLOAT32),
    "fedasync": Preset("fedasync", PlanMode.FULL, DeltaEncoding.FLOAT32),
}


def preset(name: str) -> Preset:
    """The preset called ``name``, or a ValueError listing the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(PRESETS)}") from None


def strategy_params(strategy: str, buffer_size: int, clients_per_round: int) -> dict[str, int]:
    """The job-level knobs each strategy takes: K for buffered ones, C for FedAvg."""
    if strategy in ("ftte", "fedbuff"):
        return {"buffer_size": buffer_size}
    if strategy == "fedavg":
        return {"clients_per_round": clients_per_round}
    return {}
