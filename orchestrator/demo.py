"""``ftte demo``: a local fleet trains a shipped task to its target, with live progress.

Starts Mosquitto with the generated TLS + ACL config on a loopback port, the orchestrator
service, and one ``ftte-agent`` process per device with heterogeneous memory budgets and
injected slowdowns; ends with a summary and an accuracy-vs-time PNG in the run folder.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from broker.launcher import find_mosquitto
from orchestrator.localfleet import LocalFleet, LocalFleetSpec
from orchestrator.planner import BudgetTooSmall
from orchestrator.server import TrainingServer
from orchestrator.service import JobResult, OrchestratorService
from orchestrator.telemetry import InfluxConfig


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo for the CLI's arguments; return the process exit code."""
    try:
        find_mosquitto()
    except FileNotFoundError as exc:
        print(f"ftte demo: {exc}", file=sys.stderr)
        return 1
    run_dir = args.out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    influx = None
    if args.influx_url:
        influx = InfluxConfig(
            url=args.influx_url,
            token=args.influx_token,
            org=args.influx_org,
            bucket=args.influx_bucket,
        )
    data_files = tuple(args.data)
    try:
        spec = LocalFleetSpec(
            run_dir=run_dir,
            task=args.task,
            devices=len(data_files) or args.devices,
            strategy=args.strategy,
            influx=influx,
            port=args.port,
            data_files=data_files,
        )
    except ValueError as exc:
        print(f"ftte demo: {exc}", file=sys.stderr)
        return 1
    print(f"ftte demo: {spec.devices} devices, task {spec.task}, strategy {spec.strategy}")
    print(f"run folder: {run_dir}")
    fleet = LocalFleet(spec)
    fleet.start_broker()
    service = OrchestratorService(fleet.job_config())
    stop = threading.Event()
    outcome: list[JobResult] = []
    worker = threading.Thread(target=lambda: outcome.append(service.run(stop)), daemon=True)
    try:
        worker.start()
        fleet.start_agents()
        _show_progress(service, worker, spec.max_wall_s + 30)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping", file=sys.stderr)
    finally:
        stop.set()
        worker.join(timeout=30)
        fleet.stop()
    if not outcome:
        print("the orchestrator did not finish; see the logs in the run folder", file=sys.stderr)
        return 1
    result = outcome[0]
    plot = _plot(service, run_dir / "accuracy.png", service.target)
    counters = service.telemetry.counters()
    server = service.server
    primary = service.objective.primary
    print(
        f"\n{'reached' if result.reached_target else 'did not reach'} target "
        f"{service.target:.2f}: {primary} {result.metrics.get(primary, float('nan')):.3f} at "
        f"version {result.version} after {result.wall_time_s:.0f} s"
    )
    print(f"updates accepted {server.accepted}, rejected {dict(server.rejected) or 0}")
    budgets = sorted(d.budget_bytes for d in server.devices.values())
    print(f"device budgets {budgets[0]}..{budgets[-1]} B; devices per slice: {_slices(server)}")
    print(f"telemetry points written {counters.written}, lost {counters.failed}")
    print(f"accuracy plot: {plot}")
    return 0 if result.reached_target else 1


def _slices(server: TrainingServer) -> str:
    """How many devices train how many tensors under the current plans."""
    # Plans are redrawn as scores refresh: ask for each device's current plan rather than
    # read whichever it was last sent (the strongest devices are re-planned first).
    sizes: Counter[int] = Counter()
    excluded = 0
    for device_id in server.devices:
        try:
            sizes[len(server.plan_for(device_id).trainable)] += 1
        except BudgetTooSmall:
            excluded += 1
    parts = [f"{count} × {n} tensors" for n, count in sorted(sizes.items())]
    return ", ".join(parts + ([f"{excluded} excluded"] if excluded else []))


def _show_progress(service: OrchestratorService, worker: threading.Thread, limit: float) -> None:
    started = time.monotonic()
    interactive = sys.stdout.isatty()
    last = ""
    while worker.is_alive() and time.monotonic() - started < limit:
        server = service.server
        online = sum(1 for d in server.devices.values() if d.online)
        line = (
            f"{time.monotonic() - started:5.0f} s  devices online {online:3d}  "
            f"version {server.version:4d}  {service.objective.primary} "
            f"{service.measure().get(service.objective.primary, float('nan')):.3f}  "
            f"updates {server.accepted:5d}  rejected {sum(server.rejected.values())}"
        )
        if interactive:
            print("\r" + line, end="", flush=True)
        elif line.split("version")[1] != last:
            print(line, flush=True)
            last = line.split("version")[1]
        time.sleep(1.0)


def _plot(service: OrchestratorService, path: Path, target: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if service.history:
        t, _, acc = zip(*service.history, strict=True)
        ax.plot(t, acc, color="C0", label=service.config.job.strategy)
    ax.axhline(target, color="grey", ls="--", lw=0.8, label=f"target {target:.2f}")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel(f"{service.objective.primary} ({service.config.job.target_on.value})")
    ax.set_title("ftte demo: local fleet over MQTT")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
