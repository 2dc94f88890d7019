"""Named training setups: a strategy with the slice mode and wire encodings it is run with.

The baselines train the full model and move float32 both ways, as their papers do; ftte
trains per-device slices, sends int8 deltas up and float16 model values down.
``ftte-weakest`` is the FTTE paper's single subset sized for the weakest device. This module
is the one place a preset becomes a running ``TrainingServer`` (service and simulator alike).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ftte.tasks.base import Task
from ftte.wire.messages import DeltaEncoding, TrainConfig
from orchestrator.planner import PlanMode
from orchestrator.server import ServerConfig, TrainingServer
from orchestrator.strategies import make_strategy


@dataclass(frozen=True)
class Preset:
    """A strategy name, its parameters, the slice mode and the wire encodings."""

    strategy: str
    plan_mode: PlanMode
    delta_encoding: DeltaEncoding  # device -> server: the trained delta
    model_encoding: DeltaEncoding  # server -> device: current model values
    params: dict[str, Any] = field(default_factory=dict)


_FULL = DeltaEncoding.FLOAT32
PRESETS: dict[str, Preset] = {
    "ftte": Preset("ftte", PlanMode.PER_DEVICE, DeltaEncoding.INT8, DeltaEncoding.FLOAT16),
    "ftte-weakest": Preset("ftte", PlanMode.WEAKEST, DeltaEncoding.INT8, DeltaEncoding.FLOAT16),
    "fedbuff": Preset("fedbuff", PlanMode.FULL, _FULL, _FULL),
    "fedavg": Preset("fedavg", PlanMode.FULL, _FULL, _FULL),
    "fedasync": Preset("fedasync", PlanMode.FULL, _FULL, _FULL),
}


def preset(name: str) -> Preset:
    """The preset called ``name``, or a ValueError listing the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(PRESETS)}") from None


@dataclass(frozen=True)
class JobKnobs:
    """The job-level settings a preset is combined with."""

    job: str = "job"
    train: TrainConfig = field(default_factory=TrainConfig)
    buffer_size: int = 10  # K, for the buffered strategies
    clients_per_round: int = 10  # C, for FedAvg
    max_staleness: int = 50
    model_seed: int = 0


def make_server(name: str, task: Task, knobs: JobKnobs) -> TrainingServer:
    """A training server running preset ``name`` on ``task`` with the job's knobs."""
    chosen = preset(name)
    params: dict[str, Any] = {}
    if chosen.strategy in ("ftte", "fedbuff"):
        params["buffer_size"] = knobs.buffer_size
    elif chosen.strategy == "fedavg":
        params["clients_per_round"] = knobs.clients_per_round
    config = ServerConfig(
        job=knobs.job,
        plan_mode=chosen.plan_mode,
        train=replace(knobs.train, delta_encoding=chosen.delta_encoding),
        model_encoding=chosen.model_encoding,
        max_staleness=knobs.max_staleness,
        model_seed=knobs.model_seed,
    )
    return TrainingServer(task, make_strategy(chosen.strategy, **(params | chosen.params)), config)
