"""``ftte bench ingest``: the orchestrator's live ingest against the broker's own QoS 1 rate.

For each fleet size, a generated fleet (``init_broker``: TLS, a password and ACL entry
per device) and a Mosquitto with the generated config carry two measurements, one after
the other:

- **orchestrator**: the real service (``ftte orchestrator``, its own process, FTTE preset
  on digits) with ``devices`` loadgen devices connected: updates per second that the
  orchestrator journaled and acknowledged, as counted by the devices (and, independently,
  the orchestrator's accepted count from its final checkpoint);
- **raw broker**: the same number of device sessions publish, at QoS 1 with one in flight
  each (as a device with its update), payloads of the sizes the devices sent to the orchestrator
  (random bytes), to one C subscriber (``mosquitto_sub`` on the orchestrator's account,
  QoS 1): messages per second through the broker, timed by the subscriber.

With ``--workers 0 1 2`` the orchestrator measurement runs once per count of ingest worker
processes (``[ingest] workers``; 0: the orchestrator decodes every update itself), each on
a fresh broker and fleet of the same config, and the raw measurement follows the last.

The ratio is orchestrator / raw. The raw rate is what this box's broker moves with this
load generator in front of it; both share the same two cores with everything else. So each
measurement also records the CPU seconds each process spent per update (read from
``/proc``): what the rates would be with a core each, and where the work goes.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import random
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt

from broker.launcher import RunningBroker, start_dev_broker
from ftte import topics
from ftte.bench import FLEET, loopback_fleet, publish
from ftte.config import dump_section, write_toml
from ftte.loadgen.pool import SessionPool
from ftte.loadgen.run import (
    DeviceSession,
    LoadConfig,
    LoadRun,
    raise_fd_limit,
    sessions_from_broker_dir,
)
from ftte.transport.mqtt import BrokerSettings
from orchestrator.status import load_broker_account

# QoS 1 publishes in flight per session: one, as a device with one update to deliver (the
# orchestrator run's devices). A window of 20 (the broker's max_inflight_messages) on 1,000
# sessions overflowed the subscriber's queue: 218 msgs/s arrived, the rest was dropped.
RAW_WINDOW = 1


# ``ftte`` under cProfile timed by the main thread's CPU clock: a profile of what the
# orchestrator spends, not of how long it waited for the cores other processes held.
PROFILED = """
import cProfile, time
from ftte.cli import main
profiler = cProfile.Profile(time.thread_time)
try:
    profiler.runcall(main, {argv!r})
finally:
    profiler.dump_stats({out!r})
"""


def start_orchestrator(
    folder: Path, broker_dir: Path, max_wall_s: float, workers: int, profile: Path | None = None
) -> subprocess.Popen[Any]:
    """``ftte orchestrator`` on the fleet, with a target no model reaches (it runs until
    stopped), an assignment timeout longer than the run and ``workers`` ingest workers;
    under cProfile, its statistics written to ``profile`` when it stops, if given."""
    from orchestrator.config import JobConfig, JobSection
    from orchestrator.ingest.workers import IngestSettings
    from orchestrator.server import ServerSettings

    account = load_broker_account(broker_dir / "orchestrator.toml")
    config = JobConfig(
        JobSection(
            "ingest",
            FLEET,
            folder / "orchestrator",
            target_accuracy=1.01,
            max_versions=10**9,
            max_wall_s=max_wall_s,
        ),
        account,
        server=ServerSettings(assignment_timeout_s=3600),
        ingest=IngestSettings(workers=workers, accounts=broker_dir),
    )
    job = folder / "job.toml"
    write_toml(job, dump_section(config), mode=0o600)
    log = (folder / "orchestrator.log").open("ab")
    command = ["-m", "ftte.cli", "orchestrator", "--config", str(job)]
    if profile is not None:
        command = ["-c", PROFILED.format(out=str(profile), argv=command[2:])]
    return subprocess.Popen(
        [sys.executable, *command],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The process ids of ``pid``'s children (Linux ``/proc``)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(c) for c in text.split()]


def orchestrator_accepted(folder: Path) -> int:
    """Updates the orchestrator accepted, from its final checkpoint."""
    from orchestrator.checkpoint import load_state

    state = load_state(folder / "orchestrator")
    if state is None:
        raise RuntimeError(f"the orchestrator left no checkpoint; see {folder}/orchestrator.log")
    return int(state["accepted"])


class Subscriber:
    """``mosquitto_sub`` on every update topic, one output line per message, timestamped."""

    def __init__(self, account: BrokerSettings, port: int) -> None:
        self.times: deque[float] = deque()
        self.cpu_s = 0.0  # its CPU seconds, read when it stops
        self.process = subprocess.Popen(
            [
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "--cafile",
                str(account.ca_file),
                "-u",
                account.username,
                "-P",
                account.password,
                "-V",
                "mqttv5",
                "-q",
                "1",
                "-t",
                topics.all_updates_filter(FLEET),
                "-F",
                ".",
            ],
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stdout: IO[bytes]) -> None:
        for _ in stdout:
            self.times.append(time.monotonic())

    def stop(self) -> None:
        """End the subscriber."""
        self.cpu_s = cpu_seconds(self.process.pid)
        self.process.terminate()
        self.process.wait(10)


class Flooder:
    """Device sessions on one ``SessionPool`` that keep ``window`` QoS 1 publishes in flight."""

    def __init__(self, sessions: list[DeviceSession], window: int) -> None:
        self.pool = SessionPool()
        self.window = window
        self.in_flight: dict[mqtt.Client, int] = {}
        self.pubacks = 0
        context = ssl.create_default_context(cafile=str(sessions[0].broker.ca_file))
        self.clients: list[tuple[mqtt.Client, str]] = []
        for s in sessions:
            client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id=s.device_id, protocol=mqtt.MQTTv5
            )
            client.username_pw_set(s.broker.username, s.broker.password)
            client.tls_set_context(context)
            client.max_inflight_messages_set(window)
            client.on_publish = self._acked
            self.pool.add(client)
            self.in_flight[client] = 0
            self.clients.append((client, topics.update_topic(FLEET, s.device_id)))
        self.settings = sessions[0].broker

    def connect(self, timeout_s: float) -> None:
        """Connect every session (TLS) and wait for every CONNACK."""
        for client, _ in self.clients:
            client.connect(self.settings.host, self.settings.port, keepalive=60)
            self.pool.serve(0)
        deadline = time.monotonic() + timeout_s
        while not all(c.is_connected() for c, _ in self.clients):
            if time.monotonic() > deadline:
                raise TimeoutError(f"raw publishers did not all connect in {timeout_s:.0f} s")
            self.pool.serve(0.05)

    def fill(self, payloads: list[bytes], start: int) -> int:
        """Top every session's window up; return how many were published."""
        sent = 0
        for client, topic in self.clients:
            while self.in_flight[client] < self.window:
                client.publish(topic, payloads[(start + sent) % len(payloads)], qos=1)
                self.in_flight[client] += 1
                sent += 1
        return sent

    def close(self) -> None:
        """Disconnect every session."""
        for client, _ in self.clients:
            client.disconnect()
        self.pool.serve(0.2)
        self.pool.close()

    def _acked(self, client: mqtt.Client, _userdata: Any, _mid: int, _rc: Any, _p: Any) -> None:
        self.in_flight[client] -= 1
        self.pubacks += 1


def raw_rate(
    broker_dir: Path, port: int, devices: int, sizes: list[int], seconds: float, broker_pid: int
) -> dict[str, Any]:
    """Messages per second from ``devices`` sessions through the broker to one subscriber."""
    sessions = sessions_from_broker_dir(broker_dir, devices)
    raise_fd_limit(devices + 256)
    rng = random.Random(0)
    payloads = [rng.randbytes(n) for n in sizes[:1000]]
    subscriber = Subscriber(load_broker_account(broker_dir / "orchestrator.toml"), port)
    flood = Flooder(sessions, RAW_WINDOW)
    try:
        flood.connect(300)
        # The subscriber is in place once a probe comes through.
        probe, probe_topic = flood.clients[0]
        deadline = time.monotonic() + 30
        while not subscriber.times:
            if time.monotonic() > deadline:
                raise TimeoutError("the subscriber never received a probe")
            probe.publish(probe_topic, b"probe", qos=1)
            until = time.monotonic() + 0.5
            while time.monotonic() < until and not subscriber.times:
                flood.pool.serve(0.05)
        received_before = len(subscriber.times)
        cpu = {"loadgen": time.process_time(), "broker": cpu_seconds(broker_pid)}
        cpu["subscriber"] = cpu_seconds(subscriber.process.pid)
        started = time.monotonic()
        sent = 0
        while time.monotonic() - started < seconds:
            sent += flood.fill(payloads, sent)
            flood.pool.serve(0.01)
        arrived = list(subscriber.times)[received_before:]
        cpu["loadgen"] = time.process_time() - cpu["loadgen"]
        cpu["broker"] = cpu_seconds(broker_pid) - cpu["broker"]
        cpu["subscriber"] = cpu_seconds(subscriber.process.pid) - cpu["subscriber"]
        in_window = sum(1 for t in arrived if t <= started + seconds)
    finally:
        flood.close()
        subscriber.stop()
    return {
        "msgs_per_s": in_window / seconds,
        "published": sent,
        "received_in_window": in_window,
        "bytes_per_msg_mean": sum(len(p) for p in payloads) / len(payloads),
        # CPU per message that came through in the window (those published are as many,
        # give or take the window's edges).
        "cpu_ms_per_msg": {k: 1000 * v / max(1, in_window) for k, v in cpu.items()},
    }


def orchestrator_rate(
    folder: Path,
    broker_dir: Path,
    devices: int,
    config: LoadConfig,
    broker_pid: int,
    workers: int,
    profile: Path | None = None,
) -> tuple[dict[str, Any], list[int]]:
    """The loadgen's results against ``ftte orchestrator`` with ``workers`` ingest workers,
    and the payload sizes it sent; with ``profile`` (a folder), cProfile statistics of the
    orchestrator and of the load generator's run written there."""
    budget = config.connect_timeout_s + config.duration_s + config.drain_s + 120
    since = time.time()
    name = f"{devices}-workers-{workers}"
    orchestrator_profile = None if profile is None else profile / f"orchestrator-{name}.prof"
    process = start_orchestrator(folder, broker_dir, budget, workers, orchestrator_profile)
    try:
        # The orchestrator must be subscribed before the births, or they reach it retained
        # (it starts its workers before it subscribes).
        wait_for_job_state(load_broker_account(broker_dir / "operator.toml"), budget, since)
        helpers = children(process.pid)
        if len(helpers) != workers:
            raise RuntimeError(f"{len(helpers)} worker processes, not {workers}")
        # From here to the drain's end: the orchestrator serving (its start-up left out), the
        # loadgen connecting, running and draining.
        cpu = {"orchestrator": cpu_seconds(process.pid), "broker": cpu_seconds(broker_pid)}
        cpu["workers"] = sum(cpu_seconds(pid) for pid in helpers)
        cpu["loadgen"] = time.process_time()
        run = LoadRun(sessions_from_broker_dir(broker_dir, devices), config)
        if profile is None:
            results = run.run()
        else:
            profiler = cProfile.Profile(time.thread_time)
            results = profiler.runcall(run.run)
            profiler.dump_stats(profile / f"loadgen-{name}.prof")
        cpu["loadgen"] = time.process_time() - cpu["loadgen"]
        cpu["orchestrator"] = cpu_seconds(process.pid) - cpu["orchestrator"]
        cpu["workers"] = sum(cpu_seconds(pid) for pid in helpers) - cpu["workers"]
        cpu["broker"] = cpu_seconds(broker_pid) - cpu["broker"]
        sizes = [n for d in run.devices for n in d.payload_sizes]
    finally:
        process.terminate()
        process.wait(120)
    results["orchestrator_accepted"] = orchestrator_accepted(folder)
    # Per accepted update, over the whole run (connecting included: TLS handshakes weigh on
    # the loadgen's share at 1,000 devices and more).
    accepted = max(1, results["orchestrator_accepted"])
    results["cpu_ms_per_update"] = {k: 1000 * v / accepted for k, v in cpu.items()}
    return results, sizes


def wait_for_job_state(account: BrokerSettings, timeout_s: float, since: float) -> None:
    """Until an orchestrator started after ``since`` (Unix s) has published its retained job
    state (it is serving); an earlier run's on the same broker does not count."""
    from orchestrator.status import read_status

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            state = read_status(account, FLEET, timeout_s=5)
            if state["state"] == "running" and state["heartbeat_unix_s"] >= since:
                return
        except TimeoutError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no orchestrator served within {timeout_s:.0f} s")
        time.sleep(0.5)


def ingest_benchmark(
    sizes: list[int],
    config: LoadConfig,
    raw_seconds: float,
    folder: Path,
    workers: tuple[int, ...] = (0,),
    profile: Path | None = None,
) -> dict[str, Any]:
    """Both measurements at each fleet size; the orchestrator's once per count of ingest
    workers, each on a freshly generated fleet and broker (profiled into ``profile``, a
    folder, if given: the rates are then the profiler's, not comparable)."""
    results: dict[str, Any] = {"loadgen": asdict(config), "raw_seconds": raw_seconds}
    runs = {}
    for devices in sizes:
        lives: dict[str, dict[str, Any]] = {}
        for i, count in enumerate(workers):
            # A fresh broker per run: the devices' sessions on a used one still hold the
            # previous orchestrator's last assignments, which they would answer first.
            sub = folder / f"fleet-{devices}-workers-{count}"
            sub.mkdir()
            fleet, files = loopback_fleet(sub, devices, 10**8, ingest_workers=count)
            broker_dir = files.out_dir
            broker: RunningBroker = start_dev_broker(fleet, broker_dir, fleet.fleet.broker_port)
            try:
                assert broker.process is not None
                pid = broker.process.pid
                lives[str(count)], payload_sizes = orchestrator_rate(
                    sub, broker_dir, devices, config, pid, count, profile
                )
                if i == len(workers) - 1:  # the raw rate on the last run's broker
                    raw = raw_rate(
                        broker_dir, broker.port, devices, payload_sizes, raw_seconds, pid
                    )
            finally:
                broker.stop()
        runs[str(devices)] = {
            "raw_broker": raw,
            "workers": {
                key: {
                    "orchestrator": live,
                    # None: nothing reached the subscriber (a window the broker could not carry).
                    "ratio": live["updates_per_s"] / raw["msgs_per_s"]
                    if raw["msgs_per_s"]
                    else None,
                }
                for key, live in lives.items()
            },
        }
        for key in lives:
            print(format_row(devices, int(key), runs[str(devices)]), flush=True)
    results["fleets"] = runs
    return results


def format_row(devices: int, workers: int, run: dict[str, Any]) -> str:
    """One fleet size and worker count: both rates, their ratio, losses and latency."""
    live, raw = run["workers"][str(workers)]["orchestrator"], run["raw_broker"]
    ratio = run["workers"][str(workers)]["ratio"]
    p = live["latency_ms"]["submit_to_ack"]
    cpu, raw_cpu = live["cpu_ms_per_update"], raw["cpu_ms_per_msg"]
    return (
        f"{devices:6d} {workers:7d} {live['peak_sessions']:9d} "
        f"{live['bytes_per_update_mean']:8.0f} "
        f"{live['updates_per_s']:10.0f} {raw['msgs_per_s']:10.0f} {ratio or 0:6.3f} "
        f"{p['p50']:7.0f} {p['p99']:7.0f} {live['lost']:5d} "
        f"{live['acks'].get('journaled', 0):8d} {live['orchestrator_accepted']:8d} "
        f"{cpu['orchestrator']:6.2f} {cpu['workers']:6.2f} {cpu['loadgen']:6.2f} "
        f"{cpu['broker']:6.2f} "
        f"{raw_cpu['loadgen']:6.2f} {raw_cpu['broker']:6.2f} {raw_cpu['subscriber']:6.2f}"
    )


def format_table(results: dict[str, Any]) -> str:
    """Every fleet size and worker count, one row each."""
    lines = [
        f"{'devices':>6s} {'workers':>7s} {'sessions':>9s} {'B/upd':>8s} {'orch upd/s':>10s} "
        f"{'raw msg/s':>10s} {'ratio':>6s} {'p50 ms':>7s} {'p99 ms':>7s} {'lost':>5s} "
        f"{'acked':>8s} {'accepted':>8s} "
        "CPU ms/update: orch workers loadgen broker | raw: loadgen broker sub"
    ]
    for n, run in results["fleets"].items():
        lines += [format_row(int(n), int(w), run) for w in run["workers"]]
    return "\n".join(lines)


def run_ingest_benchmark(args: argparse.Namespace) -> int:
    """Run for the CLI's arguments, print the table and write JSON."""
    config = LoadConfig(
        duration_s=args.duration, think_s=args.think, drain_s=args.drain, seed=args.seed
    )
    with tempfile.TemporaryDirectory() as tmp:
        results = ingest_benchmark(
            args.sizes, config, args.raw_seconds, Path(tmp), tuple(args.workers), args.profile
        )
    publish(results, format_table(results), args.json)
    return 0
