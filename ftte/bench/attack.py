"""``ftte bench attack``: what f hostile devices of 20 do to the accuracy curve.

For FTTE, FedBuff and FedAvg on the same simulated fleet (digits, 20 devices, 90 %
stragglers), each strategy runs honest with the default influence profile and with f = 0,
1, 2, 3 hostile devices doing every attack of ``ftte.sim.attacks`` at once (2**53 samples and
the delta flipped and scaled to 1e30) under the recommended profile (direction screening),
over ``SEEDS`` (each seed draws its own data partition, fleet and hostile devices). A run's
accuracy is the mean of the curve over the last ``TAIL`` of the strategy's horizon, where
honest runs have levelled off: one aggregation's jitter averages out. Each cell is the gap
in points to the honest default run of the same seed (positive: worse), as the median over
seeds and its range. The noise floor is the same gap between honest default runs of two
different seeds (seed s against seed s + 1, cyclically): how far two honest runs drift
apart.
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
from orchestrator.influence import InfluenceSettings

DEVICES = 20
# Virtual seconds each strategy runs. Honest, seed 0, on this fleet: FTTE 0.93 at 60 s,
# FedBuff 0.92 at 120 s and 0.94 at 180 s, FedAvg (waiting for its stragglers) 0.95 at
# 300 s and 0.97 at 400 s: each tail is where the honest curve has slowed to a few points
# per tail. Longer horizons would not fit the grid in ~30 min on 2 shared cores.
HORIZON_S = {"ftte": 60.0, "fedbuff": 150.0, "fedavg": 500.0}
TAIL = 1 / 3  # share of the horizon, at its end, over which accuracy is averaged
SEEDS = (0, 1, 2)
HOSTILE = (0, 1, 2, 3)
KIND = Attack.ALL

# The influence settings compared: the defaults (bounds only) and direction screening.
PROFILES = {
    "default": InfluenceSettings(),
    "screen": InfluenceSettings(screen=True),
}
BASELINE = "default"  # run honest only: the all-honest run every cell is compared with
RECOMMENDED = "screen"  # run with every f (the old bench's default-profile attacks: git log)
Job = tuple[str, int, str, int]  # strategy, seed, profile, hostile devices


def run_attack_benchmark(args: argparse.Namespace) -> int:
    """Run the grid, print the table and write the JSON."""
    started = time.perf_counter()
    results = attack_benchmark(args.strategies, workers=os.cpu_count() or 1)
    results["wall_time_s"] = time.perf_counter() - started
    publish(results, format_table(results), args.json)
    return 0


def attack_benchmark(strategies: list[str], workers: int = 1) -> dict[str, Any]:
    """Every (strategy, profile, f) over the seeds; gaps in points to the honest default
    run of the same seed, and the noise floor between honest seeds."""
    jobs: list[Job] = [
        (strategy, seed, profile, f)
        for strategy in strategies
        for profile in PROFILES
        for f in (HOSTILE if profile == RECOMMENDED else (0,))
        for seed in SEEDS
    ]
    runs = dict(zip(jobs, run_all(_run_one, jobs, workers), strict=True))
    tail = {job: tail_accuracy(run, HORIZON_S[job[0]]) for job, run in runs.items()}
    rows = []
    for strategy in strategies:
        honest = [tail[(strategy, seed, BASELINE, 0)] for seed in SEEDS]
        shifted = honest[1:] + honest[:1]
        rows.append(_row(strategy, "noise floor", 0, honest, shifted))
        for profile in PROFILES:
            for f in HOSTILE if profile == RECOMMENDED else ():
                runs_f = [tail[(strategy, seed, profile, f)] for seed in SEEDS]
                rows.append(_row(strategy, profile, f, honest, runs_f))
    return {
        "devices": DEVICES,
        "horizon_s": {strategy: HORIZON_S[strategy] for strategy in strategies},
        "tail": TAIL,
        "seeds": list(SEEDS),
        "attack": KIND.value,
        "profiles": {name: repr(settings) for name, settings in PROFILES.items()},
        "rows": rows,
        "runs": [
            {
                "strategy": job[0],
                "seed": job[1],
                "profile": job[2],
                "hostile": job[3],
                "tail_acc": tail[job],
                "acc_at_horizon": run["acc_at_budget"],
                "rejected": run["rejected"],
            }
            for job, run in runs.items()
        ],
    }


def _row(
    strategy: str, profile: str, f: int, honest: list[float], other: list[float]
) -> dict[str, Any]:
    gaps = [100 * (h - o) for h, o in zip(honest, other, strict=True)]
    return {
        "strategy": strategy,
        "profile": profile,
        "hostile": f,
        "honest_tail_acc": honest,
        "tail_acc": other,
        "gap_points": gaps,
        "median_gap_points": float(np.median(gaps)),
        "min_gap_points": min(gaps),
        "max_gap_points": max(gaps),
    }


def tail_accuracy(run: dict[str, Any], horizon_s: float) -> float:
    """Time-weighted mean accuracy over the last ``TAIL`` of the horizon: each value counts
    for as long as it was the model's (the curve is a step function of the versions)."""
    start = horizon_s * (1 - TAIL)
    curve = [(p["t"], p["acc"]) for p in run["curve"]]
    before = [acc for t, acc in curve if t <= start]
    points = [(start, before[-1] if before else 0.0)]
    points += [(t, acc) for t, acc in curve if start < t <= horizon_s]
    ends = [t for t, _ in points[1:]] + [horizon_s]
    return float(
        sum(acc * (end - t) for (t, acc), end in zip(points, ends, strict=True))
        / (horizon_s - start)
    )


def _run_one(job: Job) -> dict[str, Any]:
    strategy, seed, profile, hostile = job
    torch.set_num_threads(1)  # one process per core; more threads only contend
    print(f"[attack] {strategy} seed {seed} {profile} f={hostile}", file=sys.stderr, flush=True)
    horizon = HORIZON_S[strategy]
    config = SimConfig(
        strategy=strategy,
        fleet=FleetSpec(devices=DEVICES),
        seed=seed,
        target=1.01,  # never reached: every run goes to the horizon
        time_limit_s=horizon,
        min_time_s=horizon,
        max_updates=1_000_000,
        attack=AttackSpec(KIND, hostile) if hostile else None,
        influence=PROFILES[profile],
    )
    return simulate(config)


def format_table(results: dict[str, Any]) -> str:
    """One line per (strategy, profile, f): median gap over the seeds and its range."""
    lines = [
        f"{'strategy':9} {'profile':12} {'f':>2} {'median gap pts':>14} {'range':>15} "
        f"{'tail acc':>20}"
    ]
    for r in results["rows"]:
        accs = " ".join(f"{a:.3f}" for a in r["tail_acc"])
        lines.append(
            f"{r['strategy']:9} {r['profile']:12} {r['hostile']:2d} "
            f"{r['median_gap_points']:+14.1f} "
            f"{r['min_gap_points']:+7.1f}..{r['max_gap_points']:+6.1f} {accs:>20}"
        )
    return "\n".join(lines)
