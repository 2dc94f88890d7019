"""``ftte bench attack``: what f hostile devices of 20 do to the accuracy curve.

For FTTE, FedBuff and FedAvg on the same simulated fleet (digits, 20 devices, 90 %
stragglers, seed 0), each strategy runs honest, honest with another seed (the noise floor:
how far two honest runs drift apart), and with f = 1, 2, 3 hostile devices of each kind in
``ftte.sim.attacks`` under the default combination rule (the strategy's weighted mean), and
honest and with f = 1, 2, 3 devices doing every attack at once under the coordinate-wise
median (``[influence] robust_rule``). Reported per run, against
the strategy's honest run with the default rule, in points: the accuracy at the strategy's
time horizon and the mean gap between the two accuracy curves over the horizon (positive:
the attacked run is worse). The same is measured under the hardened profile (``PROFILES``:
deltas clipped to the median norm, samples to the median count, equal say over time).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np
import torch

from ftte.bench import publish, run_all
from ftte.sim.attacks import Attack, AttackSpec
from ftte.sim.fleet import FleetSpec
from ftte.sim.run import SimConfig, simulate
from orchestrator.influence import InfluenceSettings, RobustRule

DEVICES = 20
# Virtual seconds each strategy runs: honest, FTTE passes 0.88 on this fleet by 40 s and
# FedAvg (waiting for its stragglers) 0.96 by 400 s.
HORIZON_S = {"ftte": 60.0, "fedbuff": 60.0, "fedavg": 400.0}
HOSTILE = (1, 2, 3)
KINDS = (Attack.ALL, Attack.FLIP)

# The influence settings compared: the defaults, the median rule, and the hardened profile
# (an operator's choice when devices may be hostile; docs/security.md has its cost).
PROFILES = {
    "mean": InfluenceSettings(),
    "median": InfluenceSettings(robust_rule=RobustRule.MEDIAN),
    "hardened": InfluenceSettings(clip_factor=1.0, sample_factor=1.0, equal_say_window=20),
}
Job = tuple[str, int, str, AttackSpec | None]  # strategy, seed, profile, attack
GRID_POINTS = 20  # times over the horizon at which the curves are compared


def run_attack_benchmark(args: argparse.Namespace) -> int:
    """Run the grid, print the table and write the JSON."""
    started = time.perf_counter()
    results = attack_benchmark(workers=os.cpu_count() or 1)
    results["wall_time_s"] = time.perf_counter() - started
    publish(results, format_table(results), args.json)
    return 0


def attack_benchmark(workers: int = 1) -> dict[str, Any]:
    """Every strategy honest, with another seed, and under every (rule, kind, f); gaps in
    points to the honest run with the default rule."""
    mean = "mean"
    jobs: list[Job] = []
    for strategy in HORIZON_S:
        jobs += [(strategy, 0, mean, None), (strategy, 1, mean, None)]
        jobs += [(strategy, 0, mean, AttackSpec(kind, f)) for kind in KINDS for f in HOSTILE]
        # The median's own cost and what it adds against the strongest attack.
        jobs.append((strategy, 0, "median", None))
        jobs += [(strategy, 0, "median", AttackSpec(Attack.ALL, f)) for f in HOSTILE]
        jobs.append((strategy, 0, "hardened", None))
        jobs += [(strategy, 0, "hardened", AttackSpec(kind, f)) for kind in KINDS for f in HOSTILE]
    runs = run_all(_run_one, jobs, workers)
    rows = []
    for strategy in HORIZON_S:
        mine = [(job, run) for job, run in zip(jobs, runs, strict=True) if job[0] == strategy]
        baseline = (0, mean, None)
        honest = next(run for (_, *case), run in mine if tuple(case) == baseline)
        for (_, seed, profile, attack), run in mine:
            if (seed, profile, attack) == baseline:
                continue
            rows.append(
                {
                    "strategy": strategy,
                    "profile": profile,
                    "case": f"honest, seed {seed}" if attack is None else attack.kind.value,
                    "hostile": 0 if attack is None else attack.devices,
                    "acc_at_horizon": run["acc_at_budget"],
                    "honest_acc_at_horizon": honest["acc_at_budget"],
                    "acc_drop_points": 100 * (honest["acc_at_budget"] - run["acc_at_budget"]),
                    "mean_curve_gap_points": curve_gap(honest, run, HORIZON_S[strategy]),
                    "rejected": run["rejected"],
                }
            )
    return {"devices": DEVICES, "horizon_s": HORIZON_S, "rows": rows}


def curve_gap(honest: dict[str, Any], attacked: dict[str, Any], horizon_s: float) -> float:
    """Mean of honest minus attacked accuracy, in points, over times spread on the horizon."""
    times = np.linspace(horizon_s / GRID_POINTS, horizon_s, GRID_POINTS)
    return float(100 * np.mean([_at(honest, t) - _at(attacked, t) for t in times]))


def _at(run: dict[str, Any], time_s: float) -> float:
    before = [p["acc"] for p in run["curve"] if p["t"] <= time_s]
    return before[-1] if before else 0.0


def _run_one(job: Job) -> dict[str, Any]:
    strategy, seed, profile, attack = job
    torch.set_num_threads(1)  # one process per core; more threads only contend
    print(f"[attack] {strategy} seed {seed} {profile} {attack}", file=sys.stderr, flush=True)
    horizon = HORIZON_S[strategy]
    config = SimConfig(
        strategy=strategy,
        fleet=FleetSpec(devices=DEVICES),
        seed=seed,
        target=1.01,  # never reached: every run goes to the horizon
        time_limit_s=horizon,
        min_time_s=horizon,
        max_updates=1_000_000,
        attack=attack,
        influence=PROFILES[profile],
    )
    return simulate(config)


def format_table(results: dict[str, Any]) -> str:
    """One line per run: strategy, case, f, accuracy and the gaps to the honest run."""
    lines = [
        f"{'strategy':9} {'profile':8} {'case':15} {'f':>2} {'acc':>6} {'honest':>6} "
        f"{'drop pts':>8} {'curve gap pts':>13}"
    ]
    for r in results["rows"]:
        lines.append(
            f"{r['strategy']:9} {r['profile']:8} {r['case']:15} {r['hostile']:2d} "
            f"{r['acc_at_horizon']:6.3f} "
            f"{r['honest_acc_at_horizon']:6.3f} {r['acc_drop_points']:+8.1f} "
            f"{r['mean_curve_gap_points']:+13.1f}"
        )
    return "\n".join(lines)
