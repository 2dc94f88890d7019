"""``ftte bench gateway``: site gateways pre-aggregating against the flat fleet.

The same simulated fleet (digits, ``DEVICES`` devices, 90 % stragglers) runs FTTE flat
(every device update crosses to the central broker) and with the devices grouped into
``SITES`` sites whose gateways combine their updates (``orchestrator.gateway``), for each
flush window T in ``WAITS_S`` and several seeds. Reported per (T, seed) and as each T's
mean: the accuracy at the horizon (acceptance: within 1 point of the flat fleet's), and
the bytes and messages that reached the central broker.
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
from ftte.sim.fleet import FleetSpec
from ftte.sim.run import SimConfig, simulate
from orchestrator.gateway import FlushPolicy

DEVICES = 20
SITES = 2  # of 10 devices each
HORIZON_S = 60.0  # virtual seconds, as `ftte bench attack`: FTTE passes 0.88 by ~40 s
SEEDS = (0, 1, 2)
# Flush windows T compared (G at its default): the time an update may wait at the gateway
# against the devices' round trips, which are seconds on this fleet (digits' model is tiny).
WAITS_S = (0.25, 0.5, 2.0)
Job = tuple[int, int, float]  # seed, sites, T


def run_gateway_benchmark(args: argparse.Namespace) -> int:
    """Run the flat fleet and the sited one at every T for each seed; table and JSON."""
    started = time.perf_counter()
    results = gateway_benchmark(args.seeds, workers=os.cpu_count() or 1)
    results["wall_time_s"] = time.perf_counter() - started
    publish(results, format_table(results), args.json)
    return 0


def gateway_benchmark(seeds: int, workers: int = 1) -> dict[str, Any]:
    """Per seed the flat run and a sited run per T; each T's means over the seeds."""
    chosen = SEEDS[:seeds]
    jobs: list[Job] = [(seed, 0, 0.0) for seed in chosen]
    jobs += [(seed, SITES, wait) for wait in WAITS_S for seed in chosen]
    runs = dict(zip(jobs, run_all(_run_one, jobs, workers), strict=True))
    rows = []
    for wait in WAITS_S:
        for seed in chosen:
            flat, sited = runs[(seed, 0, 0.0)], runs[(seed, SITES, wait)]
            rows.append(
                {
                    "max_wait_s": wait,
                    "seed": seed,
                    "flat_acc": flat["acc_at_budget"],
                    "gateway_acc": sited["acc_at_budget"],
                    "acc_diff_points": 100 * (sited["acc_at_budget"] - flat["acc_at_budget"]),
                    "flat_bytes_central_up": flat["bytes_central_up"],
                    "gateway_bytes_central_up": sited["bytes_central_up"],
                    "flat_messages_central_up": flat["messages_central_up"],
                    "gateway_messages_central_up": sited["messages_central_up"],
                    "flat_updates_accepted": flat["updates_accepted"],
                    "gateway_updates_accepted": sited["updates_accepted"],
                    "flat_median_round_trip_s": flat["median_update_round_trip_s"],
                    "flat_rejected": flat["rejected"],
                    "gateway_server_rejected": sited["rejected"],
                    "gateway_rejected": sited["gateway_rejected"],
                }
            )
    means = []
    for wait in WAITS_S:
        mine = [r for r in rows if r["max_wait_s"] == wait]
        mean: dict[str, float] = {"max_wait_s": wait}
        for key in ("flat_acc", "gateway_acc", "acc_diff_points"):
            mean[key] = float(np.mean([r[key] for r in mine]))
        for what in ("bytes", "messages"):
            flat_sum = sum(r[f"flat_{what}_central_up"] for r in mine)
            mean[f"{what}_central_up_ratio"] = (
                sum(r[f"gateway_{what}_central_up"] for r in mine) / flat_sum
            )
        means.append(mean)
    return {
        "devices": DEVICES,
        "sites": SITES,
        "horizon_s": HORIZON_S,
        "max_updates": FlushPolicy().max_updates,
        "rows": rows,
        "means": means,
    }


def _run_one(job: Job) -> dict[str, Any]:
    seed, sites, wait = job
    torch.set_num_threads(1)  # one process per core; more threads only contend
    print(f"[gateway] seed {seed} sites {sites} T {wait}", file=sys.stderr, flush=True)
    config = SimConfig(
        fleet=FleetSpec(devices=DEVICES),
        seed=seed,
        target=1.01,  # never reached: every run goes to the horizon
        time_limit_s=HORIZON_S,
        min_time_s=HORIZON_S,
        max_updates=1_000_000,
        sites=sites,
        flush=FlushPolicy(max_wait_s=wait) if sites else FlushPolicy(),
    )
    return simulate(config)


def format_table(results: dict[str, Any]) -> str:
    """One line per (T, seed), then each T's means."""
    lines = [
        f"{'T s':>4} {'seed':>4} {'flat acc':>8} {'gw acc':>8} {'diff pts':>8} "
        f"{'flat B up':>10} {'gw B up':>10} {'flat msgs':>9} {'gw msgs':>8}"
    ]
    for r in results["rows"]:
        lines.append(
            f"{r['max_wait_s']:4.2f} {r['seed']:4d} {r['flat_acc']:8.3f} {r['gateway_acc']:8.3f} "
            f"{r['acc_diff_points']:+8.1f} {r['flat_bytes_central_up']:10d} "
            f"{r['gateway_bytes_central_up']:10d} {r['flat_messages_central_up']:9d} "
            f"{r['gateway_messages_central_up']:8d}"
        )
    for m in results["means"]:
        lines.append(
            f"T {m['max_wait_s']:4.2f} s mean: flat {m['flat_acc']:.3f}, gateways "
            f"{m['gateway_acc']:.3f} ({m['acc_diff_points']:+.1f} pts), bytes up "
            f"x{m['bytes_central_up_ratio']:.3f}, messages x{m['messages_central_up_ratio']:.3f}"
        )
    return "\n".join(lines)
