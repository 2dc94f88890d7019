"""``ftte bench batchnorm``: a model with a batch norm, its statistics aggregated or dropped.

The task is ``digits_bn`` (the digits CNN with a ``BatchNorm2d`` after the first
convolution). Each strategy runs twice on the same simulated fleet and seed: as ftte runs
it (devices send the running statistics their training moved, the server aggregates them,
evaluates and releases with them) and with the statistics dropped (the engine puts every
buffer back to its initial value after each aggregation, so the server evaluates, and the
devices receive, mean 0 and variance 1: what happens when buffers are never sent). Both are
compared with the same model trained centrally on the pooled device data, the accuracy the
federated model should reach. Reported: the validation accuracy at the strategy's time
horizon, the best over the run, and the gap between the two runs in points.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np
import torch

from edge_agent.trainer import train_slice
from ftte.bench import publish, run_all
from ftte.sim.fleet import FleetSpec, make_fleet
from ftte.sim.run import SimConfig, build_task, summarize
from ftte.sim.simulator import FleetSimulator
from ftte.tasks.base import Dataset, Task
from ftte.wire.messages import TrainConfig
from orchestrator.presets import make_server
from orchestrator.server import ServerConfig, TrainingServer
from orchestrator.strategies.base import AggregationReport, Strategy

TASK = "digits_bn"
DEVICES = 20
# Virtual seconds per strategy, as ``ftte bench attack``: FTTE passes 0.88 on this fleet
# (digits, 90 % stragglers) by 40 s and FedAvg, waiting for its stragglers, 0.96 by 400 s.
HORIZON_S = {"ftte": 60.0, "fedavg": 400.0}
CENTRAL_EPOCHS = 30
Job = tuple[str, bool]  # strategy, statistics aggregated


class StatisticsDropped(TrainingServer):
    """The engine with every buffer put back to its initial value after each aggregation:
    the baseline of a model whose running statistics are never sent."""

    def __init__(self, task: Task, strategy: Strategy, config: ServerConfig) -> None:
        super().__init__(task, strategy, config)
        self._initial = {n: a.copy() for n, a in self.buffers.items()}

    def aggregate_if_ready(self) -> AggregationReport | None:
        """Aggregate as the engine does, then forget the statistics."""
        report = super().aggregate_if_ready()
        for name, value in self._initial.items():
            self.buffers[name][...] = value
        return report


def run_batchnorm_benchmark(args: argparse.Namespace) -> int:
    """Run both strategies both ways and the central reference; print and write the JSON."""
    started = time.perf_counter()
    jobs: list[Job] = [(s, kept) for s in HORIZON_S for kept in (True, False)]
    workers = min(os.cpu_count() or 1, len(jobs))
    runs = run_all(_run_one, jobs, workers)
    central = central_accuracy(build_task(_config("fedavg")))
    rows = []
    for strategy in HORIZON_S:
        kept, dropped = (run for (s, _), run in zip(jobs, runs, strict=True) if s == strategy)
        rows.append(
            {
                "strategy": strategy,
                "horizon_s": HORIZON_S[strategy],
                "aggregated_acc": kept["acc_at_budget"],
                "dropped_acc": dropped["acc_at_budget"],
                "aggregated_best_acc": max(p["acc"] for p in kept["curve"]),
                "dropped_best_acc": max(p["acc"] for p in dropped["curve"]),
                "gap_points": 100 * (kept["acc_at_budget"] - dropped["acc_at_budget"]),
                "versions": [kept["versions"], dropped["versions"]],
                "updates_accepted": [kept["updates_accepted"], dropped["updates_accepted"]],
            }
        )
    results = {
        "task": TASK,
        "devices": DEVICES,
        "seed": 0,
        "central_acc": central,
        "central_epochs": CENTRAL_EPOCHS,
        "rows": rows,
        "wall_time_s": time.perf_counter() - started,
    }
    publish(results, format_table(results), args.json)
    return 0


def _config(strategy: str) -> SimConfig:
    horizon = HORIZON_S[strategy]
    return SimConfig(
        task=TASK,
        strategy=strategy,
        fleet=FleetSpec(devices=DEVICES),
        target=1.01,  # never reached: every run goes to the horizon
        time_limit_s=horizon,
        min_time_s=horizon,
        max_updates=1_000_000,
    )


def _run_one(job: Job) -> dict[str, Any]:
    """One simulated run, the statistics aggregated or dropped (``simulate``'s steps)."""
    strategy, aggregated = job
    torch.set_num_threads(1)  # one process per core; more threads only contend
    print(f"[batchnorm] {strategy} aggregated={aggregated}", file=sys.stderr, flush=True)
    config = _config(strategy)
    task = build_task(config)
    server = make_server(
        strategy, task, job=f"bench-bn-{strategy}", seed=config.seed, run_tag="0" * 8
    )
    if not aggregated:
        server = StatisticsDropped(task, server.strategy, server.config)
    full_peak = server.full_model_peak()
    profiles = make_fleet(config.fleet, full_peak, config.seed)
    simulator = FleetSimulator(server, profiles, config.fleet, config.seed)
    result = simulator.run(
        time_limit_s=config.time_limit_s,
        max_updates=config.max_updates,
        target=config.target,
        min_time_s=config.min_time_s,
    )
    budgets = {p.device_id: p.budget_bytes for p in profiles}
    return summarize(result, server, budgets, full_peak, 1.01, config.min_time_s)


def central_accuracy(task: Task) -> float:
    """Validation accuracy of the model trained centrally on the pooled device data (the
    job's training settings, ``CENTRAL_EPOCHS`` epochs), evaluated with its statistics."""
    pooled = Dataset(
        np.concatenate([d.x for d in task.devices]), np.concatenate([d.y for d in task.devices])
    )
    torch.manual_seed(0)
    model = task.model.make_model()
    names = list(task.model.parameter_shapes())
    config = TrainConfig(epochs=1)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    for epoch in range(CENTRAL_EPOCHS):
        result = train_slice(model, names, pooled, config, seed=epoch)
        with torch.no_grad():  # train_slice leaves the model as it was: apply its delta
            for name, delta in result.delta.items():
                params[name].add_(torch.from_numpy(delta))
            for name, value in result.buffers.items():
                buffers[name].copy_(torch.from_numpy(value))
    model.eval()
    validation = task.validation
    assert validation is not None  # digits_bn ships one
    with torch.no_grad():
        logits = model(torch.from_numpy(validation.x))
    return float((logits.argmax(dim=1).numpy() == validation.y).mean())


def format_table(results: dict[str, Any]) -> str:
    """One line per strategy: accuracy with the statistics aggregated and dropped."""
    lines = [
        f"{TASK}, {results['devices']} devices; trained centrally: {results['central_acc']:.3f}",
        f"{'strategy':9} {'horizon':>8} {'aggregated':>10} {'dropped':>8} {'gap pts':>8} "
        f"{'best agg':>8} {'best drop':>9}",
    ]
    for r in results["rows"]:
        lines.append(
            f"{r['strategy']:9} {r['horizon_s']:7.0f}s {r['aggregated_acc']:10.3f} "
            f"{r['dropped_acc']:8.3f} {r['gap_points']:+8.1f} {r['aggregated_best_acc']:8.3f} "
            f"{r['dropped_best_acc']:9.3f}"
        )
    return "\n".join(lines)
