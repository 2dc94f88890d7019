"""One simulated run: task + preset + fleet → measured curve, memory and payload."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.runtime import REFERENCE
from ftte.sim.attacks import AttackSpec, hostile_devices
from ftte.sim.fleet import FleetSpec, make_fleet
from ftte.sim.simulator import CurvePoint, FleetSimulator, ProgressFn, SimResult
from ftte.tasks import load_task
from ftte.tasks.base import Task
from ftte.training import TrainSettings
from ftte.wire.messages import Release
from orchestrator.gateway import FlushPolicy, SiteCombiner
from orchestrator.influence import InfluenceSettings
from orchestrator.presets import make_server
from orchestrator.releases import ReleaseStore
from orchestrator.server import ServerSettings, TrainingServer


@dataclass(frozen=True)
class SimConfig:
    """Everything that defines a simulated run; same config and seed, same curve."""

    task: str = "digits"
    strategy: str = "ftte"
    fleet: FleetSpec = field(default_factory=FleetSpec)
    seed: int = 0
    alpha: float = 0.5
    samples_per_device: int = 60
    target: float | None = None  # of the objective's primary metric; None: the task's own
    time_limit_s: float = 6 * 3600.0
    min_time_s: float = 0.0  # keep going after the target until then (benchmarks compare at it)
    max_updates: int = 20_000
    train: TrainSettings = field(default_factory=TrainSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    influence: InfluenceSettings = field(default_factory=InfluenceSettings)
    strategy_params: dict[str, Any] = field(default_factory=dict)  # the strategy's own defaults
    attack: AttackSpec | None = None  # hostile devices among the fleet
    # Share of each device's data held out to measure each model it is sent (federated
    # evaluation); needed when the task has no validation set, which the curve then uses.
    holdout: float = 0.0
    fleet_min_devices: int = 3  # reports the fleet's measure needs (capped at the fleet size)
    # What the simulated devices train with: torch (the reference), or the lean numpy
    # runtime agents run by default, ~4x faster than torch on small dense models and ~5x
    # slower on convolutions (im2col); both compute the same updates (test_lean_runtime).
    runtime: str = REFERENCE
    # Site gateways pre-aggregating: device i joins site i mod sites (0: a flat fleet).
    sites: int = 0
    flush: FlushPolicy = field(default_factory=FlushPolicy)


def build_task(config: SimConfig) -> Task:
    """The task with one data partition per simulated device."""
    return load_task(
        config.task,
        num_devices=config.fleet.devices,
        seed=config.seed,
        alpha=config.alpha,
        samples_per_device=config.samples_per_device,
    )


def simulate(
    config: SimConfig,
    task: Task | None = None,
    progress: ProgressFn | None = None,
    releases: ReleaseStore | None = None,
) -> dict[str, Any]:
    """Run one preset on one fleet and return its measurements as plain data; with
    ``releases``, keep each new best model and the last one there (by the objective's
    primary metric, on the validation set or, without one, the fleet's measure)."""
    task = task if task is not None else build_task(config)
    server = make_server(
        config.strategy,
        task,
        job=f"sim-{config.strategy}",
        seed=config.seed,
        train=config.train,
        settings=config.server,
        influence=config.influence,
        strategy_params=config.strategy_params,
        run_tag=f"{config.seed:08x}",  # same seed, same ids, same payload sizes and times
    )
    full_peak = server.full_model_peak()
    profiles = make_fleet(config.fleet, full_peak, config.seed)
    hostile = {}
    if config.attack is not None:
        hostile = hostile_devices([p.device_id for p in profiles], config.attack, config.seed)
    shapes = task.model.parameter_shapes()
    gateways = {
        f"site-{k}": (
            SiteCombiner(f"site-{k}", shapes, config.flush, config.influence, run_tag="sim"),
            [p.device_id for i, p in enumerate(profiles) if i % config.sites == k],
        )
        for k in range(config.sites)
    }
    simulator = FleetSimulator(
        server,
        profiles,
        config.fleet,
        config.seed,
        hostile,
        holdout=config.holdout,
        fleet_min_devices=min(config.fleet_min_devices, config.fleet.devices),
        runtime=config.runtime,
        gateways=gateways,
    )
    target = config.target if config.target is not None else task.target

    def release(metrics: dict[str, float]) -> Release:
        model = task.model.name
        return Release(
            server.config.job, server.version, model, metrics, server.model_state(), time.time()
        )

    def measured_by() -> dict[str, tuple[int, float]]:
        """The devices whose reports made the fleet's measure now (none with validation)."""
        if task.validation is not None:
            return {}
        fleet = server.fleet_evaluation.latest(simulator.fleet_min_devices)
        return {} if fleet is None else fleet.by_device_of(task.objective.primary)

    def seen(point: CurvePoint) -> None:
        if releases is not None and task.objective.primary in point.metrics:
            releases.keep_if_best(release(point.metrics), measured_by())
        if progress is not None:
            progress(point)

    result = simulator.run(
        time_limit_s=config.time_limit_s,
        max_updates=config.max_updates,
        target=target,
        min_time_s=config.min_time_s,
        progress=seen,
    )
    last = result.curve[-1].metrics if result.curve else {}
    fresh = releases is not None and (
        releases.last is None or releases.last.version != server.version
    )
    if releases is not None and fresh and task.objective.primary in last:
        releases.offer(release(server.evaluate() or last), measured_by())
    budgets = {p.device_id: p.budget_bytes for p in profiles}
    summary = summarize(result, server, budgets, full_peak, target, config.min_time_s)
    summary["bytes_central_up"] = int(sum(result.bytes_central))
    summary["messages_central_up"] = len(result.bytes_central)
    summary["gateway_rejected"] = {
        site: dict(combiner.rejected) for site, (combiner, _) in gateways.items()
    }
    return summary


def summarize(
    result: SimResult,
    server: TrainingServer,
    budgets: dict[str, int],
    full_peak: int,
    target: float,
    budget_s: float,
) -> dict[str, Any]:
    """The measurements of one run, in the benchmark's JSON shape.

    ``final_acc``, ``acc_at_budget`` and each curve point's ``acc`` hold the objective's
    primary metric, named by ``metric`` (accuracy for the classification benchmarks), and
    ``target_accuracy`` the target of that metric; each curve point has every metric too.
    """
    peaks = result.peak_mem_bytes
    weakest = min(budgets, key=lambda d: budgets[d])
    over = sorted(d for d, peak in peaks.items() if peak > budgets[d])
    sizes_up, sizes_down = result.bytes_up, result.bytes_down
    return {
        "metric": server.task.objective.primary,
        "target_accuracy": target,
        "time_to_target_s": result.time_to_target_s,
        "final_acc": result.final_value,
        "acc_at_budget": _accuracy_at(result, budget_s) if budget_s else None,
        "end_time_s": result.end_time_s,
        "versions": server.version,
        "updates_accepted": server.accepted,
        "accepted_by_device": dict(sorted(result.accepted_by_device.items())),
        "rejected": dict(server.rejected),
        "dropouts": result.dropouts,
        "peak_mem_bytes_max": max(peaks.values(), default=0),
        "peak_mem_bytes_mean": float(np.mean(list(peaks.values()))) if peaks else 0.0,
        "peak_mem_bytes_weakest": peaks.get(weakest, 0),
        "predicted_full_model_peak_bytes": full_peak,
        "weakest_budget_bytes": budgets[weakest],
        "all_within_budget": not over,
        "devices_over_budget": len(over),
        "devices_trained": len(peaks),
        "excluded_devices": sum(1 for d in server.devices.values() if d.excluded),
        "bytes_up_per_update": float(np.mean(sizes_up)) if sizes_up else 0.0,
        "bytes_down_per_update": float(np.mean(sizes_down)) if sizes_down else 0.0,
        "bytes_total": int(sum(sizes_up) + sum(sizes_down)),
        "median_update_round_trip_s": float(np.median([b - a for a, b in result.arrivals]))
        if result.arrivals
        else None,
        "curve": [
            {"t": p.time_s, "version": p.version, "acc": p.value, **p.metrics} for p in result.curve
        ],
    }


def _accuracy_at(result: SimResult, time_s: float) -> float:
    """The primary metric of the model version in force at virtual time ``time_s``."""
    before = [p.value for p in result.curve if p.time_s <= time_s]
    return before[-1] if before else float("nan")
