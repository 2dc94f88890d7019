"""``ftte bench gateway``: site gateways pre-aggregating against the flat fleet.

The same simulated fleet (digits, ``DEVICES`` devices, 90 % stragglers) runs FTTE flat
(every device update crosses to the central broker) and with the devices grouped into
``SITES`` sites whose gateways combine their updates (``orchestrator.gateway``, default
flush policy), for several seeds. Reported per seed and on average: the accuracy at the
horizon (acceptance: the gateways' within 1 point of the flat fleet's on average), and the
bytes and messages that reached the central broker.
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
SITES = 4
HORIZON_S = 60.0  # virtual seconds, as `ftte bench attack`: FTTE passes 0.88 by ~40 s
SEEDS = (0, 1, 2)
Job = tuple[int, int]  # seed, sites


def run_gateway_benchmark(args: argparse.Namespace) -> int:
    """Run flat and sited fleets for every seed, print the table and write the JSON."""
    started = time.perf_counter()
    results = gateway_benchmark(args.seeds, workers=os.cpu_count() or 1)
    results["wall_time_s"] = time.perf_counter() - started
    publish(results, format_table(results), args.json)
    return 0


def gateway_benchmark(seeds: int, workers: int = 1) -> dict[str, Any]:
    """Per seed the flat and the sited run side by side; means over the seeds."""
    jobs: list[Job] = [(seed, sites) for seed in SEEDS[:seeds] for sites in (0, SITES)]
    runs = run_all(_run_one, jobs, workers)
    rows = []
    for seed in SEEDS[:seeds]:
        flat, sited = (run for (s, _), run in zip(jobs, runs, strict=True) if s == seed)
        rows.append(
            {
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
                "flat_rejected": flat["rejected"],
                "gateway_server_rejected": sited["rejected"],
                "gateway_rejected": sited["gateway_rejected"],
            }
        )
    mean = {
        key: float(np.mean([r[key] for r in rows]))
        for key in ("flat_acc", "gateway_acc", "acc_diff_points")
    }
    flat_bytes = sum(r["flat_bytes_central_up"] for r in rows)
    mean["bytes_central_up_ratio"] = sum(r["gateway_bytes_central_up"] for r in rows) / flat_bytes
    flat_messages = sum(r["flat_messages_central_up"] for r in rows)
    mean["messages_central_up_ratio"] = (
        sum(r["gateway_messages_central_up"] for r in rows) / flat_messages
    )
    policy = FlushPolicy()
    return {
        "devices": DEVICES,
        "sites": SITES,
        "horizon_s": HORIZON_S,
        "flush": {"max_updates": policy.max_updates, "max_wait_s": policy.max_wait_s},
        "rows": rows,
        "mean": mean,
    }


def _run_one(job: Job) -> dict[str, Any]:
    seed, sites = job
    torch.set_num_threads(1)  # one process per core; more threads only contend
    print(f"[gateway] seed {seed} sites {sites}", file=sys.stderr, flush=True)
    config = SimConfig(
        fleet=FleetSpec(devices=DEVICES),
        seed=seed,
        target=1.01,  # never reached: every run goes to the horizon
        time_limit_s=HORIZON_S,
        min_time_s=HORIZON_S,
        max_updates=1_000_000,
        sites=sites,
    )
    return simulate(config)


def format_table(results: dict[str, Any]) -> str:
    """One line per seed, then the means."""
    lines = [
        f"{'seed':>4} {'flat acc':>8} {'gw acc':>8} {'diff pts':>8} {'flat B up':>10} "
        f"{'gw B up':>10} {'flat msgs':>9} {'gw msgs':>8}"
    ]
    for r in results["rows"]:
        lines.append(
            f"{r['seed']:4d} {r['flat_acc']:8.3f} {r['gateway_acc']:8.3f} "
            f"{r['acc_diff_points']:+8.1f} {r['flat_bytes_central_up']:10d} "
            f"{r['gateway_bytes_central_up']:10d} {r['flat_messages_central_up']:9d} "
            f"{r['gateway_messages_central_up']:8d}"
        )
    m = results["mean"]
    lines.append(
        f"mean {m['flat_acc']:8.3f} {m['gateway_acc']:8.3f} {m['acc_diff_points']:+8.1f}  "
        f"bytes up x{m['bytes_central_up_ratio']:.3f}, "
        f"messages x{m['messages_central_up_ratio']:.3f}"
    )
    return "\n".join(lines)
