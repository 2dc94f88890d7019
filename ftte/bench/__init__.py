"""Benchmarks: each prints ratios measured side by side in one run and writes JSON."""

from __future__ import annotations

import json
import multiprocessing
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from broker.fleet import DeviceEntry, Fleet, FleetSection

if TYPE_CHECKING:
    from broker.generate import BrokerFiles

FLEET = "bench"  # the fleet name of every benchmark fleet

Job = TypeVar("Job")
Result = TypeVar("Result")


def run_all(fn: Callable[[Job], Result], jobs: list[Job], workers: int) -> list[Result]:
    """``fn`` of every job, in order, over ``workers`` spawned processes (one per core)."""
    if workers > 1 and len(jobs) > 1:
        context = multiprocessing.get_context("spawn")  # no fork of a torch-loaded parent
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            return list(pool.map(fn, jobs))
    return [fn(job) for job in jobs]


def publish(results: dict[str, Any], table: str, path: Path) -> None:
    """Record the command that produced ``results``, print ``table``, write the JSON."""
    results["command"] = " ".join(["ftte", *sys.argv[1:]])
    print(table)
    path.write_text(json.dumps(results, indent=1))


def loopback_fleet(
    folder: Path, devices: int, budget_bytes: int, ingest_workers: int = 0
) -> tuple[Fleet, BrokerFiles]:
    """A fleet of ``devices`` on a free loopback port, its files generated under ``folder``
    (with ``ingest_workers`` worker accounts)."""
    # Imported here: `publish` serves commands of the base install (`ftte loadgen`), and
    # generating TLS material needs the [server] extra.
    from broker.generate import init_broker
    from broker.launcher import free_port

    fleet = Fleet(
        FleetSection(
            name=FLEET,
            broker_host="127.0.0.1",
            broker_port=free_port(),
            bind_address="127.0.0.1",
            task="digits",
            agent_state_dir=folder / "agents",
            ingest_workers=ingest_workers,
        ),
        [DeviceEntry(f"dev-{i:05d}", budget_bytes) for i in range(devices)],
    )
    return fleet, init_broker(fleet, folder / "broker")
