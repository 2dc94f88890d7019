"""``ftte loadgen``: thousands of virtual devices from one process, against a real fleet.

The devices are ``VirtualDevice`` sessions with the credentials ``ftte broker init`` wrote
for each device, all driven by one ``SessionPool`` on this thread. A run connects them at
a bounded rate, lets them answer assignments for ``duration_s`` (dropping out and coming
back if churn is on), then stops taking new work and drains: every update submitted must
be acknowledged by the orchestrator, or it is counted as lost. Throughput is the
orchestrator's acknowledgements ("journaled") per second between the moment every device
was connected and the end of the duration; latencies are per update, from the assignment's
arrival to the acknowledgement (think time included) and from the update's submission to
its acknowledgement (delivery alone).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import resource
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.config import load_agent_config
from ftte.bench import publish
from ftte.loadgen.device import DeltaSource, VirtualDevice
from ftte.loadgen.pool import SessionPool
from ftte.transport.mqtt import BrokerSettings

SWEEP_S = 1.0  # how often every device is checked for resends and lost connections
RECONNECT_AFTER_S = 1.0  # a device whose connection broke (not a dropout) tries again
FDS_PER_DEVICE = 1  # one socket per session: the pool needs no wake-up socket pairs
FDS_SPARE = 256  # files, the selector, the interpreter's own


@dataclass(frozen=True)
class DeviceSession:
    """What a virtual device needs from its generated agent config."""

    device_id: str
    fleet: str
    broker: BrokerSettings
    budget_bytes: int


@dataclass(frozen=True)
class LoadConfig:
    """How the virtual fleet behaves."""

    duration_s: float = 30.0  # answering assignments, after every device has connected
    think_s: float = 1.0  # mean time from an assignment to its answer (uniform ±50 %)
    churn_every_s: float = 0.0  # mean time online between dropouts (exponential); 0: none
    offline_s: float = 5.0  # mean time away after a dropout (exponential)
    connects_per_s: float = 400.0  # ramp; each connect is a blocking TLS handshake here
    connect_timeout_s: float = 180.0  # for every device to be connected at the start
    drain_s: float = 60.0  # after the duration, for the last acknowledgements
    # The agent's defaults are 30 s and 480 s; a loaded orchestrator answers in seconds.
    resend_after_s: float = 30.0
    resend_max_s: float = 480.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("duration_s", "connects_per_s", "connect_timeout_s", "resend_after_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"loadgen {name} must be positive")
        for name in ("think_s", "churn_every_s", "offline_s", "drain_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"loadgen {name} must be >= 0")


def sessions_from_broker_dir(broker_dir: Path, limit: int | None = None) -> list[DeviceSession]:
    """The devices of a fleet from ``ftte broker init``'s output folder (``devices/*.toml``)."""
    paths = sorted((broker_dir / "devices").glob("*.toml"))
    if not paths:
        raise FileNotFoundError(
            f"no device configs in {broker_dir / 'devices'}: run `ftte broker init` first"
        )
    sessions = []
    for path in paths[:limit]:
        config = load_agent_config(path)
        agent = config.agent
        # A device without a configured budget measures one; virtual devices claim 1 GB.
        budget = agent.memory_budget_bytes or 10**9
        sessions.append(DeviceSession(agent.device_id, agent.fleet, config.broker, budget))
    return sessions


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted`` (up to the hard limit);
    return the soft limit now. A ValueError says how to raise the hard one if too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        soft = ceiling
    if soft < wanted:
        raise ValueError(
            f"{wanted} file descriptors needed, the hard limit is {hard}: raise it "
            "(`ulimit -Hn`, or LimitNOFILE in a systemd unit) or run fewer devices"
        )
    return soft


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p90, p99 and max of ``values`` in milliseconds (empty: zeros)."""
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    arr = np.asarray(values) * 1000.0
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(arr.max())}


class LoadRun:
    """One run of a virtual fleet; ``run`` returns its counts and rates."""

    def __init__(self, sessions: list[DeviceSession], config: LoadConfig) -> None:
        if not sessions:
            raise ValueError("loadgen needs at least one device")
        self.config = config
        self.fd_limit = raise_fd_limit(len(sessions) * FDS_PER_DEVICE + FDS_SPARE)
        self._rng = random.Random(config.seed)
        # Answers due and, in another heap, churn (dropouts and returns), by time.
        self._timers: list[tuple[float, int, Callable[[float], None]]] = []
        self._churn: list[tuple[float, int, Callable[[float], None]]] = []
        self._order = itertools.count()
        self.pool = SessionPool()
        deltas = DeltaSource(config.seed)
        contexts: dict[Path, ssl.SSLContext] = {}
        self.devices: list[VirtualDevice] = []
        for s in sessions:
            ca = s.broker.ca_file
            if ca not in contexts:
                contexts[ca] = ssl.create_default_context(cafile=str(ca))
            device = VirtualDevice(
                s.device_id,
                s.fleet,
                s.broker,
                contexts[ca],
                s.budget_bytes,
                deltas,
                self._think,
                self._wake,
                config.resend_after_s,
                config.resend_max_s,
            )
            self.pool.add(device.client)
            self.devices.append(device)
        self.peak_sessions = 0

    def _think(self) -> float:
        return self.config.think_s * self._rng.uniform(0.5, 1.5)

    def _wake(self, at: float, device: VirtualDevice) -> None:
        heapq.heappush(self._timers, (at, next(self._order), device.answer_if_due))

    def _at(self, at: float, action: Callable[[float], None]) -> None:
        heapq.heappush(self._churn, (at, next(self._order), action))

    def run(self) -> dict[str, Any]:
        """Connect, serve for the duration, drain, disconnect; the results."""
        config = self.config
        started = time.monotonic()
        connect_s = self._connect_all(started + config.connect_timeout_s)
        window_start = time.monotonic()
        journaled_before = self._journaled()
        if config.churn_every_s > 0:
            for device in self.devices:
                self._schedule_dropout(device, window_start)
        self._serve_until(window_start + config.duration_s, churn=True)
        window_s = time.monotonic() - window_start
        journaled_in_window = self._journaled() - journaled_before
        # No new work; the away come back so that what they hold is delivered.
        self._churn.clear()
        for device in self.devices:
            device.answering = False
            if device.away:
                device.come_back()
        drain_started = time.monotonic()
        deadline = drain_started + config.drain_s
        while time.monotonic() < deadline and self._outstanding():
            self._serve_until(min(deadline, time.monotonic() + 0.5), churn=False)
        drain_s = time.monotonic() - drain_started
        for device in self.devices:
            device.close()
        self._serve_until(time.monotonic() + 1.0, churn=False)
        self.pool.close()
        return self._results(connect_s, window_s, journaled_in_window, drain_s)

    def _connect_all(self, deadline: float) -> float:
        """Connect every device at the configured rate; seconds until all are online."""
        started = time.monotonic()
        gap = 1.0 / self.config.connects_per_s
        next_connect = started
        waiting = deque(self.devices)
        while not all(d.online for d in self.devices):
            now = time.monotonic()
            if now > deadline:
                online = sum(d.online for d in self.devices)
                raise TimeoutError(
                    f"{online} of {len(self.devices)} devices connected in "
                    f"{self.config.connect_timeout_s:.0f} s"
                )
            while waiting and now >= next_connect:
                waiting.popleft().connect()
                next_connect += gap
            self._serve_until(min(next_connect, now + 0.05), churn=False)
        return time.monotonic() - started

    def _serve_until(self, until: float, churn: bool) -> None:
        """Serve network events and timers until ``until``; sweep devices every second."""
        next_sweep = time.monotonic()
        while True:  # at least one pass, even when ``until`` has passed
            now = time.monotonic()
            heaps = [self._timers, self._churn] if churn else [self._timers]
            timeout = min([until - now, 0.05] + [h[0][0] - now for h in heaps if h])
            self.pool.serve(max(timeout, 0.0))
            self.peak_sessions = max(self.peak_sessions, self.pool.sessions())
            now = time.monotonic()
            for heap in heaps:
                while heap and heap[0][0] <= now:
                    _, _, action = heapq.heappop(heap)
                    action(now)
            if now >= next_sweep:
                next_sweep = now + SWEEP_S
                self._sweep(now)
            if now >= until:
                return

    def _sweep(self, now: float) -> None:
        for device in self.devices:
            device.delivery.resend_due(now)
            lost = not (device.online or device.connecting or device.away)
            started = device.counts.connects + device.counts.connect_failures > 0
            if lost and started:
                device.connect()

    def _schedule_dropout(self, device: VirtualDevice, now: float) -> None:
        def drop(at: float) -> None:
            if device.online:
                device.drop_out()
                self._at(at + self._rng.expovariate(1.0 / self.config.offline_s), back)
            else:  # not connected right now: try again later
                self._schedule_dropout(device, at)

        def back(at: float) -> None:
            device.come_back()
            self._schedule_dropout(device, at)

        self._at(now + self._rng.expovariate(1.0 / self.config.churn_every_s), drop)

    def _journaled(self) -> int:
        return sum(d.counts.acks.get("journaled", 0) for d in self.devices)

    def _outstanding(self) -> bool:
        return any(d.due is not None or d.delivery.pending() for d in self.devices)

    def _results(
        self, connect_s: float, window_s: float, journaled_in_window: int, drain_s: float
    ) -> dict[str, Any]:
        totals: Counter[str] = Counter()
        acks: Counter[str] = Counter()
        pubacks: Counter[str] = Counter()
        latencies: list[tuple[float, float]] = []
        for d in self.devices:
            counts = asdict(d.counts)
            acks.update(counts.pop("acks"))
            pubacks.update({f"{k:#04x}": n for k, n in counts.pop("pubacks").items()})
            totals.update(counts)
            latencies.extend(d.latencies)
        held = sum(d.delivery.pending() for d in self.devices)
        sizes = [n for d in self.devices for n in d.payload_sizes]
        resent = sum(d.delivery.resent for d in self.devices)
        return {
            "devices": len(self.devices),
            "config": asdict(self.config),
            "fd_limit": self.fd_limit,
            "connect_s": connect_s,
            "peak_sessions": self.peak_sessions,
            "window_s": window_s,
            "journaled_in_window": journaled_in_window,
            "updates_per_s": journaled_in_window / window_s,
            "submitted": totals["answered"],
            "acks": dict(acks),
            "resent": resent,
            "bytes_per_update_mean": float(np.mean(sizes)) if sizes else 0.0,
            # Submitted and never acknowledged by the end of the drain: lost to this run.
            "lost": held,
            "latency_ms": {
                "assignment_to_ack": percentiles([a for a, _ in latencies]),
                "submit_to_ack": percentiles([s for _, s in latencies]),
            },
            "pubacks": dict(pubacks),
            "counts": dict(totals),
            "drain_s": drain_s,
        }


def format_table(results: dict[str, Any]) -> str:
    """One paragraph: sessions, throughput, latencies, losses."""
    lat = results["latency_ms"]
    a, s = lat["assignment_to_ack"], lat["submit_to_ack"]
    c = results["counts"]
    return "\n".join(
        [
            f"{results['devices']} devices, {results['peak_sessions']} concurrent TLS sessions "
            f"(connected in {results['connect_s']:.1f} s)",
            f"{results['journaled_in_window']} updates journaled in {results['window_s']:.1f} s: "
            f"{results['updates_per_s']:.0f} updates/s",
            f"assignment->ack ms p50 {a['p50']:.0f} p90 {a['p90']:.0f} p99 {a['p99']:.0f} "
            f"max {a['max']:.0f}; submit->ack ms p50 {s['p50']:.0f} p90 {s['p90']:.0f} "
            f"p99 {s['p99']:.0f} max {s['max']:.0f}",
            f"submitted {results['submitted']}, acknowledged {results['acks']}, "
            f"resent {results['resent']}, lost {results['lost']}; dropouts {c['dropouts']}, "
            f"connections lost {c['disconnects']}, connect failures {c['connect_failures']}",
        ]
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The CLI's options, one per ``LoadConfig`` field and the fleet's folder."""
    d = LoadConfig()
    p.add_argument("--broker-dir", type=Path, required=True, help="`ftte broker init` output")
    p.add_argument("--devices", type=int, default=None, help="the first N devices (default all)")
    p.add_argument("--duration", type=float, default=d.duration_s, help="seconds of load")
    p.add_argument("--think", type=float, default=d.think_s, help="mean seconds per answer")
    p.add_argument("--churn-every", type=float, default=d.churn_every_s, help="0: no churn")
    p.add_argument("--offline", type=float, default=d.offline_s, help="mean seconds away")
    p.add_argument("--connects-per-s", type=float, default=d.connects_per_s)
    p.add_argument("--drain", type=float, default=d.drain_s, help="seconds to wait for acks")
    p.add_argument("--resend-after", type=float, default=d.resend_after_s)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--json", type=Path, default=Path("loadgen.json"))


def run_loadgen_cli(args: argparse.Namespace) -> int:
    """Run for the CLI's arguments, print the summary and write JSON."""
    config = LoadConfig(
        duration_s=args.duration,
        think_s=args.think,
        churn_every_s=args.churn_every,
        offline_s=args.offline,
        connects_per_s=args.connects_per_s,
        drain_s=args.drain,
        resend_after_s=args.resend_after,
        seed=args.seed,
    )
    results = LoadRun(sessions_from_broker_dir(args.broker_dir, args.devices), config).run()
    publish(results, format_table(results), args.json)
    return 0 if results["lost"] == 0 else 1
