"""Named training setups: a strategy with the slice mode and wire encodings it is run with.

The baselines train the full model and move float32 both ways, as their papers do; ftte
trains per-device slices, sends int8 deltas up and float16 model values down.
``ftte-weakest`` is the FTTE paper's single subset sized for the weakest device;
``fedavg-excluded`` and ``fedbuff-excluded`` are the baselines on a real fleet, where a
device whose budget cannot hold the whole model does not take part. This module
is the one place a preset becomes a running ``TrainingServer`` (service and simulator alike).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ftte.tasks.base import Task
from ftte.training import TrainSettings
from ftte.wire.messages import DeltaEncoding, TrainConfig
from orchestrator.influence import InfluenceSettings
from orchestrator.planner import PlanMode
from orchestrator.server import ServerConfig, ServerSettings, TrainingServer
from orchestrator.strategies import make_strategy
from orchestrator.strategies.base import Strategy


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
    # The baselines with the devices that cannot hold the whole model left out (issue 15).
    "fedbuff-excluded": Preset("fedbuff", PlanMode.FULL_IN_BUDGET, _FULL, _FULL),
    "fedavg-excluded": Preset("fedavg", PlanMode.FULL_IN_BUDGET, _FULL, _FULL),
}


def preset(name: str) -> Preset:
    """The preset called ``name``, or a ValueError listing the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(PRESETS)}") from None


def make_server(
    name: str,
    task: Task,
    *,
    job: str = "job",
    seed: int = 0,
    train: TrainSettings | None = None,
    settings: ServerSettings | None = None,
    influence: InfluenceSettings | None = None,
    strategy_params: Mapping[str, Any] | None = None,
    run_tag: str | None = None,
    rescore_every_s: float = 0.0,
) -> TrainingServer:
    """A training server running preset ``name`` on ``task`` with the job's settings.

    ``strategy_params`` are the job's ``[strategy]`` table; one the preset fixes is refused,
    not overwritten.
    """
    chosen = preset(name)
    train = train or TrainSettings()
    config = ServerConfig(
        job=job,
        plan_mode=chosen.plan_mode,
        train=TrainConfig(**asdict(train), delta_encoding=chosen.delta_encoding),
        model_encoding=chosen.model_encoding,
        model_seed=seed,
        settings=settings or ServerSettings(),
        influence=influence or InfluenceSettings(),
        run_tag=run_tag,
        rescore_every_s=rescore_every_s,
    )
    return TrainingServer(task, preset_strategy(name, strategy_params or {}), config)


def preset_strategy(name: str, params: Mapping[str, Any]) -> Strategy:
    """Preset ``name``'s strategy with the job's ``[strategy]`` parameters; a parameter
    the preset fixes is refused, not overwritten."""
    chosen = preset(name)
    fixed = sorted(params.keys() & chosen.params.keys())
    if fixed:
        raise ValueError(f"strategy.{fixed[0]}: preset {name!r} fixes it; remove it")
    return make_strategy(chosen.strategy, {**params, **chosen.params})
