"""``ftte bench delivery``: no acknowledged update is lost while the orchestrator is away,
and what the broker's persistence settings cost.

**Outage** (issue 13: with the orchestrator away, 2,000 updates from 200 devices all got
PUBACK "success" and 1,000 arrived). ``devices`` protocol-level devices each finish
``per_device`` updates while the orchestrator is down, through a real Mosquitto run with
the generated config and each device's generated credentials. A device is the agent's own
delivery code (``UpdateDelivery`` and ``MqttLink``, durable outbox included) without torch;
the orchestrator is the service's side of delivery without the engine (journal each new
update with fsync, acknowledge it; acknowledge a copy as a duplicate; count the broker's
drops from ``$SYS``). Then the orchestrator comes back. Counted independently: by the
devices (PUBACK reason codes, acknowledgements, what their outboxes still hold), by the
orchestrator (update ids in its journal, duplicates, broker drops) and by the broker (its
log). ``first_delivery`` is what arrived before any device sent anything twice, which is all
an agent that trusted the PUBACK would ever have delivered.

**Persistence**: brokers that differ only in their persistence settings carry the same
messages (QoS 1, the size of an update) from ``devices`` publishers to one subscriber,
online (messages per second through the broker) and away (messages per second the broker
takes into the absent subscriber's queue), and the delivery protocol end to end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import signal
import statistics
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from broker.fleet import Fleet
from broker.generate import SHIPPED_PERSISTENCE, Persistence, QueueLimits, queue_limits
from broker.launcher import RunningBroker, start_dev_broker
from edge_agent.config import load_agent_config
from edge_agent.delivery import UpdateDelivery
from edge_agent.outbox import Outbox
from ftte import topics
from ftte.bench import FLEET, loopback_fleet, publish
from ftte.errors import Rejected
from ftte.transport.mqtt import BrokerDrops, BrokerSettings, Inbound, MqttLink
from ftte.wire import decode_update, encode_update
from ftte.wire.control import UpdateAck, Verdict, decode_ack
from ftte.wire.messages import DeltaEncoding, Update
from orchestrator.checkpoint import Journal
from orchestrator.status import load_broker_account

UPDATE_FLOATS = 18_506  # the digits model, int8 as ftte sends slices: about 19 KB an update
SENTINEL = "sentinel"  # update id prefix of the markers that end a backlog
DROPPED_LOG_LINE = "Outgoing messages are being dropped"
PERSISTENCE_MODES = {
    "off": Persistence(enabled=False),
    "shipped": SHIPPED_PERSISTENCE,
    "every-100-changes": Persistence(autosave_interval=100, autosave_on_changes=True),
    "every-change": Persistence(autosave_interval=1, autosave_on_changes=True),
}


def update_payload(device_id: str, update_id: str, floats: int) -> bytes:
    """An encoded update of ``floats`` random values (int8, like an ftte slice delta)."""
    values = np.random.default_rng(zlib.crc32(update_id.encode())).standard_normal(floats)
    delta = {"w": values.astype(np.float32) * np.float32(1e-2)}
    update = Update(device_id, update_id, f"{device_id}.{update_id}", 0, 60, 1.0, 0, delta)
    return encode_update(update, DeltaEncoding.INT8)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll ``condition`` until it holds; seconds waited, or a TimeoutError naming ``what``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(0.02)
    return time.monotonic() - started


class BenchDevice:
    """A device's delivery side: the agent's ``UpdateDelivery`` on its own MQTT link."""

    def __init__(
        self,
        device_id: str,
        settings: BrokerSettings,
        folder: Path,
        resend_after_s: float,
        resend_max_s: float,
    ) -> None:
        self.device_id = device_id
        self.pubacks: Counter[int] = Counter()  # reason codes of the broker's PUBACKs
        self._update_topic = topics.update_topic(FLEET, device_id)
        self.link = MqttLink(
            settings,
            subscriptions=[(topics.ack_topic(FLEET, device_id), 1)],
            on_connect=lambda: self.delivery.on_connect(time.monotonic()),
            on_published=self._published,
        )
        self.delivery = UpdateDelivery(
            Outbox(folder / device_id),
            self._publish,
            resend_after_s,
            resend_max_s,
            time.monotonic(),
        )
        self.journaled: set[str] = set()  # update ids the orchestrator said it journaled

    def _publish(self, payload: bytes) -> int:
        return self.link.publish(self._update_topic, payload, qos=1).mid

    def _published(self, mid: int, reason: int) -> None:
        self.pubacks[reason] += 1
        self.delivery.on_published(mid, reason, time.monotonic())

    def poll(self, now: float, resend: bool) -> None:
        """Handle the acknowledgements that arrived; send again what is due."""
        while True:
            try:
                message = self.link.inbox.get_nowait()
            except queue.Empty:
                break
            ack = decode_ack(message.payload)
            if self.delivery.on_ack(ack) is not None and ack.verdict is Verdict.JOURNALED:
                self.journaled.add(ack.update_id)
        if resend:
            self.delivery.resend_due(now)


class Journaler:
    """The orchestrator's side of delivery without the engine, on its own thread."""

    def __init__(self, settings: BrokerSettings, run_dir: Path) -> None:
        self.link = MqttLink(
            settings,
            subscriptions=[(topics.all_updates_filter(FLEET), 1), (topics.BROKER_DROPPED, 0)],
            manual_ack=True,
        )
        self.journal = Journal(run_dir)
        self.journaled: set[str] = set()
        self.duplicates = 0
        self.sentinels = 0
        self.drops = BrokerDrops()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        """Connect (the persistent session brings what queued meanwhile) and serve."""
        self.link.start()
        self._thread.start()

    def stop(self) -> None:
        """Go away cleanly: the broker keeps the session and queues for it."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        self.link.stop()
        self.journal.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                message = self.link.inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            self._handle(message)
            self.link.ack(message)

    def _handle(self, message: Inbound) -> None:
        if message.topic == topics.BROKER_DROPPED:
            self.drops.note(message.payload)
            return
        try:
            update = decode_update(message.payload)
        except Rejected:
            return
        if update.update_id.startswith(SENTINEL):
            self.sentinels += 1
            return
        verdict = Verdict.DUPLICATE
        if update.update_id not in self.journaled:
            self.journal.append(message.topic, message.payload)
            self.journaled.add(update.update_id)
            verdict = Verdict.JOURNALED
        else:
            self.duplicates += 1
        ack = UpdateAck(update.update_id, verdict).encode()
        self.link.publish(topics.ack_topic(FLEET, update.device_id), ack, qos=1)


@dataclass
class BenchFleet:
    """A generated fleet with its broker on a loopback port."""

    folder: Path
    fleet: Fleet
    broker: RunningBroker
    orchestrator: BrokerSettings
    device_settings: dict[str, BrokerSettings] = field(default_factory=dict)


def start_fleet(
    folder: Path, devices: int, queue: QueueLimits | None, persistence: Persistence
) -> BenchFleet:
    """Generate a fleet's files and start its broker."""
    fleet, files = loopback_fleet(folder, devices, 10**6)
    broker = start_dev_broker(
        fleet, files.out_dir, fleet.fleet.broker_port, queue=queue, persistence=persistence
    )
    settings = {d: load_agent_config(p).broker for d, p in files.device_configs.items()}
    return BenchFleet(
        folder, fleet, broker, load_broker_account(files.orchestrator_credentials), settings
    )


def connect_devices(
    bench: BenchFleet, resend_after_s: float, resend_max_s: float, timeout_s: float
) -> list[BenchDevice]:
    """Every device's link, connected and subscribed to its ack topic."""
    devices = [
        BenchDevice(d, s, bench.folder / "outboxes", resend_after_s, resend_max_s)
        for d, s in bench.device_settings.items()
    ]
    for device in devices:
        device.link.start()
    wait_for(
        lambda: all(d.link.subscribed.is_set() for d in devices), timeout_s, "devices connected"
    )
    return devices


def send_round_robin(devices: list[BenchDevice], messages: int, payload: bytes) -> None:
    """Publish ``messages`` copies of ``payload``, one device after the other."""
    for i in range(messages):
        device = devices[i % len(devices)]
        device.link.publish(topics.update_topic(FLEET, device.device_id), payload)


def pubacks(devices: list[BenchDevice]) -> int:
    """PUBACKs the devices have received so far."""
    return sum(sum(d.pubacks.values()) for d in devices)


def stop_devices(devices: list[BenchDevice]) -> None:
    """Disconnect every device."""
    for device in devices:
        device.link.stop()


def outage_run(
    folder: Path,
    devices: int,
    per_device: int,
    *,
    queue: QueueLimits | None = None,
    resend_after_s: float = 5.0,
    resend_max_s: float = 60.0,
    update_floats: int = UPDATE_FLOATS,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Updates finished while the orchestrator is away, then delivered: counts and times."""
    bench = start_fleet(folder, devices, queue, SHIPPED_PERSISTENCE)
    run_dir = folder / "orchestrator"
    run_dir.mkdir()
    timings: dict[str, float] = {}
    fleet_devices: list[BenchDevice] = []
    journalers: list[Journaler] = []
    try:
        # The orchestrator subscribes once (its session persists), then goes away.
        away = Journaler(bench.orchestrator, run_dir)
        journalers.append(away)
        away.start()
        wait_for(away.link.subscribed.is_set, timeout_s, "the orchestrator's subscriptions")
        away.stop()
        fleet_devices = connect_devices(bench, resend_after_s, resend_max_s, timeout_s)
        submitted = devices * per_device
        started = time.monotonic()
        for k in range(per_device):
            for device in fleet_devices:
                update_id = f"u{k:04d}{device.device_id.replace('-', '')}"
                payload = update_payload(device.device_id, update_id, update_floats)
                assignment_id = f"{device.device_id}.{k}"
                device.delivery.submit(update_id, assignment_id, payload, time.monotonic())
        wait_for(lambda: pubacks(fleet_devices) >= submitted, timeout_s, "every PUBACK")
        timings["outage_s"] = time.monotonic() - started
        codes = sum((d.pubacks for d in fleet_devices), Counter())
        # The orchestrator comes back. Its backlog is what the broker kept: it ends where a
        # marker published after the reconnect arrives (queued behind the backlog).
        back = Journaler(bench.orchestrator, run_dir)
        journalers.append(back)
        started = time.monotonic()
        back.start()
        wait_for(back.link.subscribed.is_set, timeout_s, "the orchestrator back")
        marker = fleet_devices[0]
        deadline = time.monotonic() + timeout_s
        # A marker the full queue drops is published again; any one it takes is behind.
        markers = 0
        while back.sentinels == 0:
            if time.monotonic() > deadline:
                raise TimeoutError("the backlog's end marker never arrived")
            sentinel = update_payload(marker.device_id, f"{SENTINEL}{time.monotonic_ns()}", 1)
            marker.link.publish(topics.update_topic(FLEET, marker.device_id), sentinel)
            markers += 1
            until = time.monotonic() + 0.5
            while back.sentinels == 0 and time.monotonic() < until:
                time.sleep(0.02)
        first_delivery = len(back.journaled)
        timings["backlog_s"] = time.monotonic() - started
        # Now the devices handle acknowledgements and send again what is due.
        started = time.monotonic()
        while any(d.delivery.pending() for d in fleet_devices):
            if time.monotonic() - started > timeout_s:
                break
            now = time.monotonic()
            for device in fleet_devices:
                device.poll(now, resend=True)
            time.sleep(0.02)
        timings["recovery_s"] = time.monotonic() - started
        # Whatever did not arrive in the backlog was dropped: the broker's counter, which it
        # republishes every sys_interval, must come to say so.
        missing = submitted - first_delivery
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: back.drops.total >= missing, 30, "the broker's drop counter")
    finally:
        for journaler in journalers:
            journaler.stop()
        stop_devices(fleet_devices)
        bench.broker.stop()
    journal = Journal(run_dir)
    in_journal = Counter(decode_update(p).update_id for _, p in journal.entries())
    journal.close()
    acked = set().union(*(d.journaled for d in fleet_devices))
    held = sum(d.delivery.pending() for d in fleet_devices)
    limits = queue or queue_limits(bench.fleet)
    log_text = bench.broker.log_path.read_text()
    return {
        "devices": devices,
        "per_device": per_device,
        "submitted": submitted,
        "bytes_per_update": len(update_payload("dev-0000", "u00000000", update_floats)),
        "max_queued_messages": limits.messages,
        "max_queued_bytes": limits.bytes,
        "pubacks": {f"{code:#04x}": n for code, n in sorted(codes.items())},
        "first_delivery": first_delivery,
        "broker_dropped": back.drops.total,
        "end_markers_sent": markers,  # all but the one that arrived were dropped too
        "broker_drop_log_lines": log_text.count(DROPPED_LOG_LINE),
        "resent": sum(d.delivery.resent for d in fleet_devices),
        "refused_pubacks": dict(sum((d.delivery.refused for d in fleet_devices), Counter())),
        "journaled": len(in_journal),
        "journaled_more_than_once": sum(1 for n in in_journal.values() if n > 1),
        "duplicates_acknowledged": back.duplicates,
        "acknowledged_journaled_by_devices": len(acked),
        "still_held_by_devices": held,
        "lost": submitted - len(in_journal),
        "timings_s": timings,
        "resend_after_s": resend_after_s,
    }


def _throughput(
    folder: Path, persistence: Persistence, devices: int, messages: int, floats: int
) -> dict[str, float]:
    """Messages per second through one broker: subscriber online, then away."""
    # Room for every message: what is measured is saving them, not dropping them.
    bench = start_fleet(folder, devices, QueueLimits(2 * messages, 2**31), persistence)
    payload = update_payload("dev-0000", "u", floats)
    results: dict[str, float] = {}
    fleet_devices: list[BenchDevice] = []
    sink = MqttLink(
        bench.orchestrator,
        subscriptions=[(topics.all_updates_filter(FLEET), 1)],
    )
    try:
        sink.start()
        wait_for(sink.subscribed.is_set, 30, "the subscriber")
        fleet_devices = connect_devices(bench, 3600.0, 3600.0, 60)
        started = time.monotonic()
        send_round_robin(fleet_devices, messages, payload)
        for _ in range(messages):
            sink.inbox.get(timeout=120)  # queue.Empty if messages stop arriving
        results["online_msgs_per_s"] = messages / (time.monotonic() - started)
        sink.stop()  # away: the broker queues for its session
        wanted = pubacks(fleet_devices) + messages
        started = time.monotonic()
        send_round_robin(fleet_devices, messages, payload)
        wait_for(lambda: pubacks(fleet_devices) >= wanted, 600, "every PUBACK")
        results["away_msgs_per_s"] = messages / (time.monotonic() - started)
        # One save with the queue in memory: Mosquitto saves on SIGUSR1 as on an autosave,
        # in its only thread, so a publish waits for the whole save.
        probe = fleet_devices[0]
        results["round_trip_ms"] = 1000 * statistics.median(round_trip(probe) for _ in range(5))
        if persistence.enabled and bench.broker.process is not None:
            stalls = []
            for _ in range(3):
                os.kill(bench.broker.process.pid, signal.SIGUSR1)
                stalls.append(round_trip(probe))
            results["round_trip_during_save_ms"] = 1000 * statistics.median(stalls)
    finally:
        stop_devices(fleet_devices)
        bench.broker.stop()
    store = folder / "broker" / "local-data" / "mosquitto.db"
    results["db_bytes_after"] = float(store.stat().st_size) if store.exists() else 0.0
    return results


def round_trip(device: BenchDevice) -> float:
    """Seconds from a small QoS 1 publish to its PUBACK."""
    wanted = pubacks([device]) + 1
    started = time.monotonic()
    device.link.publish(topics.update_topic(FLEET, device.device_id), b"probe")
    wait_for(lambda: pubacks([device]) >= wanted, 120, "a PUBACK")
    return time.monotonic() - started


def persistence_run(
    folder: Path, devices: int, messages: int, floats: int, modes: list[str]
) -> dict[str, Any]:
    """The same load through brokers that differ only in their persistence settings."""
    runs = {}
    for name in modes:
        runs[name] = {
            "settings": asdict(PERSISTENCE_MODES[name]),
            **_throughput(folder / name, PERSISTENCE_MODES[name], devices, messages, floats),
        }
    return {"devices": devices, "messages": messages, "modes": runs}


def format_table(results: dict[str, Any]) -> str:
    """The outage's counts side by side for each queue, then the persistence costs."""
    lines = []
    for name, r in results["outage"].items():
        lines.append(
            f"outage, queue {name} ({r['max_queued_messages']} messages): "
            f"{r['submitted']} updates from {r['devices']} devices, all PUBACKed {r['pubacks']}; "
            f"{r['first_delivery']} delivered before any resend, broker dropped "
            f"{r['broker_dropped']}; {r['resent']} resends; {r['journaled']} journaled "
            f"({r['journaled_more_than_once']} more than once), {r['lost']} lost, "
            f"{r['still_held_by_devices']} still held; {r['timings_s']}"
        )
    p = results.get("persistence")
    if p:
        lines.append(
            f"persistence: {p['messages']} messages of an update's size from {p['devices']} "
            "devices, messages/s through the broker"
        )
        lines.append(
            f"{'mode':18s} {'online':>8s} {'away':>8s} {'db bytes':>10s} {'rtt ms':>7s} "
            f"{'in save':>7s}"
        )
        for name, r in p["modes"].items():
            lines.append(
                f"{name:18s} {r['online_msgs_per_s']:8.0f} {r['away_msgs_per_s']:8.0f} "
                f"{r['db_bytes_after']:10.0f} {r['round_trip_ms']:7.1f} "
                f"{r.get('round_trip_during_save_ms', float('nan')):7.1f}"
            )
    return "\n".join(lines)


def run_delivery_benchmark(args: argparse.Namespace) -> int:
    """Run for the CLI's arguments, print the table and write JSON."""
    results: dict[str, Any] = {"outage": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        queues: dict[str, QueueLimits | None] = {} if args.skip_outage else {"generated": None}
        if args.old_queue and not args.skip_outage:
            # The queue ftte shipped before issue 13, for comparison.
            queues["1000 (before)"] = QueueLimits(1000, 0)
        for name, limits in queues.items():
            sub = folder / f"outage-{len(results['outage'])}"
            sub.mkdir()
            results["outage"][name] = outage_run(
                sub,
                args.devices,
                args.per_device,
                queue=limits,
                resend_after_s=args.resend_after,
            )
        if args.persistence:
            modes = list(PERSISTENCE_MODES)
            results["persistence"] = persistence_run(
                folder / "persistence", args.pdevices, args.messages, UPDATE_FLOATS, modes
            )
    publish(results, format_table(results), args.json)
    return 0
