"""``ftte bench attack``: what f hostile devices of 20 do to the accuracy curve.

For FTTE, FedBuff and FedAvg on the same simulated fleet (digits, 20 devices, 90 %
stragglers), each strategy runs honest with the default influence profile and with f = 0,
1, 2, 3 hostile devices doing every attack of ``ftte.sim.attacks`` at once (2**53 samples and
the delta flipped and scaled to 1e30) under the recommended profile (direction screening),
and, as the control, with the same f devices absent (the honest devices alone), over
``SEEDS`` (each seed draws its own data partition, fleet and hostile devices). A run's
accuracy is the mean of the curve over the last ``TAIL`` of the strategy's horizon, where
honest runs have levelled off (``tail_drift``, recorded per run): there a fleet slowed by
losing its fast devices reads as slower, not as less accurate, and one aggregation's
jitter averages out. Each cell is the gap
in points to the honest default run of the same seed (positive: worse), and for attacks
also to the honest-alone control, as the median over seeds and its range. The noise floor
is the same gap between honest default runs of two different seeds (seed s against seed
s + 1, cyclically): how far two honest runs drift apart.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import fields
from typing import Any

import numpy as np
import torch

from ftte.bench import publish, run_all
from ftte.sim.attacks import Attack, AttackSpec
from ftte.sim.fleet import FleetSpec
from ftte.sim.run import SimConfig, simulate
from orchestrator.influence import InfluenceSettings

DEVICES = 20
# Virtual seconds each strategy runs: where every seed's all-honest curve has levelled off
# (its tail's second half within PLATEAU_POINTS of its first, ``tail_drift``). FTTE, seed 0:
# +2.49 points at 60 s, +0.95 at 120 s, +0.45 at 150 s; seeds 0-4 at 150 s: seed 4 +0.82,
# at 200 s seed 4 +0.67, at 240 s all within 0.37. FedBuff, seed 0: +1.96 at 150 s, +1.16
# at 200 s, +0.51 at 300 s; FedAvg +0.28 at 500 s (docs/benchmarks.md). A horizon short of
# that measures a fleet slowed by losing a fast device to the attack as a less accurate one.
HORIZON_S = {"ftte": 240.0, "fedbuff": 300.0, "fedavg": 500.0}
TAIL = 1 / 3  # share of the horizon, at its end, over which accuracy is averaged
PLATEAU_POINTS = 0.5  # an all-honest curve whose tail climbs less than this has levelled off
CURVE_POINTS = 60  # the JSON keeps each run's accuracy at this many steps of the horizon
SEEDS = (0, 1, 2, 3, 4)
HOSTILE = (1, 2, 3)  # hostile devices of the attacked runs (and of the controls)
KIND = Attack.ALL

# The influence settings compared: the defaults (bounds only) and direction screening.
PROFILES = {
    "default": InfluenceSettings(),
    "screen": InfluenceSettings(screen=True),
}
BASELINE = "default"  # run honest only: the all-honest run every cell is compared with
RECOMMENDED = "screen"  # run with every f (the old bench's default-profile attacks: git log)
CONTROL = Attack.ABSENT  # the control: the same f devices absent, the honest ones alone
Job = tuple[str, int, str, int, Attack]  # strategy, seed, profile, hostile devices, kind


def run_attack_benchmark(args: argparse.Namespace) -> int:
    """Run the grid, print the table and write the JSON."""
    started = time.perf_counter()
    earlier = json.loads(args.reuse.read_text()) if args.reuse else None
    workers = os.cpu_count() or 1
    results = attack_benchmark(
        args.strategies, workers, earlier, tuple(args.hostile), not args.without_control
    )
    results["wall_time_s"] = time.perf_counter() - started
    publish(results, format_table(results), args.json)
    return 0


def attack_benchmark(
    strategies: list[str],
    workers: int = 1,
    earlier: dict[str, Any] | None = None,
    hostile: tuple[int, ...] = HOSTILE,
    control: bool = True,
) -> dict[str, Any]:
    """Every (strategy, profile, f, attack or control) over the seeds; gaps in points to
    the honest default run of the same seed (and, for attacks, to the honest devices alone),
    and the noise floor between honest seeds. With ``earlier`` (this benchmark's JSON),
    its runs of the same jobs are taken instead of run again (``_reused``); ``hostile``:
    the numbers of hostile devices to run (a part of the grid, when time is short);
    without ``control``, no honest-alone runs (nor their rows)."""
    counts = (0, *hostile)
    jobs: list[Job] = [
        (strategy, seed, profile, f, kind)
        for strategy in strategies
        for profile in PROFILES
        for f in (counts if profile == RECOMMENDED else (0,))
        for kind in ((KIND, CONTROL) if f and control else (KIND,))
        for seed in SEEDS
    ]
    reused = _reused(earlier, jobs, workers) if earlier else {}
    fresh = [job for job in jobs if job not in reused]
    runs = reused | dict(
        zip(fresh, map(_measured, fresh, run_all(_run_one, fresh, workers)), strict=True)
    )
    tail = {job: runs[job]["tail_acc"] for job in jobs}
    rows = []
    for strategy in strategies:
        honest = [tail[(strategy, seed, BASELINE, 0, KIND)] for seed in SEEDS]
        shifted = honest[1:] + honest[:1]
        rows.append(_row(strategy, "noise floor", 0, "all honest", honest, shifted))
        for profile in PROFILES:
            for f in counts if profile == RECOMMENDED else ():
                attacked = [tail[(strategy, seed, profile, f, KIND)] for seed in SEEDS]
                rows.append(_row(strategy, profile, f, "all honest", honest, attacked))
                if not f or not control:
                    continue
                alone = [tail[(strategy, seed, profile, f, CONTROL)] for seed in SEEDS]
                rows.append(_row(strategy, profile, f, "honest alone", alone, attacked))
                rows.append(_row(strategy, f"{profile}, absent", f, "all honest", honest, alone))
    drift = {
        strategy: [
            runs[(strategy, seed, BASELINE, 0, KIND)].get("tail_drift_points") for seed in SEEDS
        ]
        for strategy in strategies
    }
    return {
        "devices": DEVICES,
        "horizon_s": {strategy: HORIZON_S[strategy] for strategy in strategies},
        "tail": TAIL,
        "plateau_points": PLATEAU_POINTS,
        "honest_tail_drift_points": drift,
        "seeds": list(SEEDS),
        "hostile": list(hostile),
        "control": control,
        "attack": KIND.value,
        "profiles": {name: repr(settings) for name, settings in PROFILES.items()},
        "rows": rows,
        "reused_runs": sum(1 for run in reused.values() if run.get("reused")),
        "runs": [runs[job] for job in jobs],
    }


def _measured(job: Job, run: dict[str, Any]) -> dict[str, Any]:
    """What the JSON keeps of one run."""
    strategy, seed, profile, hostile, kind = job
    return {
        "strategy": strategy,
        "seed": seed,
        "profile": profile,
        "hostile": hostile,
        "kind": kind.value,
        "tail_acc": tail_accuracy(run, HORIZON_S[strategy]),
        "tail_drift_points": tail_drift(run, HORIZON_S[strategy]),
        "curve": sampled_curve(run, HORIZON_S[strategy]),
        "acc_at_horizon": run["acc_at_budget"],
        "rejected": run["rejected"],
    }


def _reused(earlier: dict[str, Any], jobs: list[Job], workers: int) -> dict[Job, dict[str, Any]]:
    """The earlier JSON's runs of ``jobs``, where it measured them as this grid does (same
    horizon, tail and profile settings, fields added since at their defaults) and where the
    strategy's all-honest runs, run again now, each give the same accuracy to the last digit
    (a run is a function of its config and seed: the check that the engine under it has
    not changed). The all-honest runs are kept as measured now: they are the baselines,
    and their curves (which an earlier JSON may lack) show where they level off."""
    if earlier["tail"] != TAIL:
        return {}
    profiles = earlier["profiles"]
    same = {
        n for n, p in PROFILES.items() if _repr_before(p, profiles.get(n, "")) == profiles.get(n)
    }
    found = {}
    for run in earlier["runs"]:
        kind = Attack(run.get("kind", KIND.value))
        job = (run["strategy"], run["seed"], run["profile"], run["hostile"], kind)
        horizon = earlier["horizon_s"].get(job[0])
        if job in jobs and job[2] in same and horizon == HORIZON_S[job[0]]:
            found[job] = {**run, "kind": kind.value, "reused": True}
    checks = [j for j in found if j[2:] == (BASELINE, 0, KIND)]
    checked = dict(
        zip(checks, map(_measured, checks, run_all(_run_one, checks, workers)), strict=True)
    )
    differ = {j[0] for j, run in checked.items() if run["tail_acc"] != found[j]["tail_acc"]}
    reproduced = {j[0] for j in checks} - differ
    for job in checks:
        print(
            f"[attack] reuse check {job[0]}: {checked[job]['tail_acc']!r} now, "
            f"{found[job]['tail_acc']!r} before",
            file=sys.stderr,
            flush=True,
        )
    kept = {job: run for job, run in found.items() if job[0] in reproduced}
    return kept | {job: checked[job] for job in checks}


def _repr_before(settings: InfluenceSettings, earlier_repr: str) -> str:
    """``repr(settings)`` without the fields an earlier repr lacks, if they are at their
    defaults (then the earlier run had the same settings); else the full repr."""
    defaults = InfluenceSettings()
    kept = [
        f"{f.name}={getattr(settings, f.name)!r}"
        for f in fields(settings)
        if f"{f.name}=" in earlier_repr or getattr(settings, f.name) != getattr(defaults, f.name)
    ]
    return f"InfluenceSettings({', '.join(kept)})"


def _row(
    strategy: str, profile: str, f: int, against: str, baseline: list[float], other: list[float]
) -> dict[str, Any]:
    gaps = [100 * (h - o) for h, o in zip(baseline, other, strict=True)]
    return {
        "strategy": strategy,
        "profile": profile,
        "hostile": f,
        "against": against,
        "baseline_tail_acc": baseline,
        "tail_acc": other,
        "gap_points": gaps,
        "median_gap_points": float(np.median(gaps)),
        "min_gap_points": min(gaps),
        "max_gap_points": max(gaps),
    }


def tail_accuracy(run: dict[str, Any], horizon_s: float) -> float:
    """Time-weighted mean accuracy over the last ``TAIL`` of the horizon."""
    return mean_accuracy(run["curve"], horizon_s * (1 - TAIL), horizon_s)


def tail_drift(run: dict[str, Any], horizon_s: float) -> float:
    """How far the curve still climbs in its tail, in points: the mean accuracy over the
    tail's second half minus that over its first half. Under ``PLATEAU_POINTS`` on every
    all-honest run, the horizon is past the curve's climb (a slower fleet would otherwise
    read as a less accurate one)."""
    middle = horizon_s * (1 - TAIL / 2)
    late = mean_accuracy(run["curve"], middle, horizon_s)
    return 100 * (late - mean_accuracy(run["curve"], horizon_s * (1 - TAIL), middle))


def mean_accuracy(curve: list[dict[str, Any]], start: float, end: float) -> float:
    """Time-weighted mean accuracy from ``start`` to ``end``: each value counts for as long
    as it was the model's (the curve is a step function of the versions; no model yet
    counts 0)."""
    steps = [(p["t"], p["acc"]) for p in curve]
    before = [acc for t, acc in steps if t <= start]
    points = [(start, before[-1] if before else 0.0)]
    points += [(t, acc) for t, acc in steps if start < t <= end]
    ends = [t for t, _ in points[1:]] + [end]
    return float(
        sum(acc * (stop - t) for (t, acc), stop in zip(points, ends, strict=True)) / (end - start)
    )


def sampled_curve(run: dict[str, Any], horizon_s: float) -> list[float]:
    """The accuracy at ``CURVE_POINTS`` + 1 evenly spaced times from 0 to the horizon, for the
    JSON (the full curve has a point per aggregation)."""
    steps = [(p["t"], p["acc"]) for p in run["curve"]]
    times = [horizon_s * i / CURVE_POINTS for i in range(CURVE_POINTS + 1)]
    return [round(([0.0] + [acc for t, acc in steps if t <= at])[-1], 4) for at in times]


def _run_one(job: Job) -> dict[str, Any]:
    strategy, seed, profile, hostile, kind = job
    torch.set_num_threads(1)  # one process per core; more threads only contend
    print(
        f"[attack] {strategy} seed {seed} {profile} f={hostile} {kind.value}",
        file=sys.stderr,
        flush=True,
    )
    horizon = HORIZON_S[strategy]
    config = SimConfig(
        strategy=strategy,
        fleet=FleetSpec(devices=DEVICES),
        seed=seed,
        target=1.01,  # never reached: every run goes to the horizon
        time_limit_s=horizon,
        min_time_s=horizon,
        max_updates=1_000_000,
        attack=AttackSpec(kind, hostile) if hostile else None,
        influence=PROFILES[profile],
    )
    return simulate(config)


def format_table(results: dict[str, Any]) -> str:
    """One line per (strategy, profile, f): median gap over the seeds and its range."""
    lines = [
        f"{'strategy':9} {'profile':17} {'f':>2} {'against':12} {'median gap pts':>14} "
        f"{'range':>15} {'tail acc':>20}"
    ]
    for r in results["rows"]:
        accs = " ".join(f"{a:.3f}" for a in r["tail_acc"])
        lines.append(
            f"{r['strategy']:9} {r['profile']:17} {r['hostile']:2d} {r['against']:12} "
            f"{r['median_gap_points']:+14.1f} "
            f"{r['min_gap_points']:+7.1f}..{r['max_gap_points']:+6.1f} {accs:>20}"
        )
    for strategy, drifts in results["honest_tail_drift_points"].items():
        shown = " ".join("-" if d is None else f"{d:+.1f}" for d in drifts)
        lines.append(f"{strategy}: all-honest tail drift (points, per seed): {shown}")
    return "\n".join(lines)
