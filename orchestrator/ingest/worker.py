"""An ingest worker: one of N processes sharing the devices' update subscription.

The broker hands each update published on ``ftte/v1/{fleet}/dev/+/update`` to one member of
the shared subscription ``$share/{group}/...`` (MQTT v5). The worker decodes it with the one
codec (bounded, total, finite values), checks every tensor's name and shape against the
model's, and publishes the result, update or refusal, to the hand-off topic for the one
orchestrator that owns the model (``orchestrator.ingest.handoff``). It acknowledges the
device's message to the broker once the broker has taken the hand-off (its PUBACK): an
update is never dropped between the two, and whatever fails on one message is counted,
logged and acknowledged, never stops the worker. The device itself is told its update is
safe only by the owner, after its journal (the ack topic), so a worker that dies costs a
resend from the device's outbox, nothing more; that is why a worker's session is not
persistent (a dead worker's queue would hold its share of the updates until it returned).

Run as ``python -m orchestrator.ingest.worker SPEC.json`` by ``IngestWorkers``; it prints
``ready`` once its subscription is in place and writes its counts to the spec's ``stats``
file when it stops (SIGTERM). It imports no torch: it needs the model's shapes, not the
model.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paho.mqtt.subscribeoptions import SubscribeOptions

from ftte import topics
from ftte.errors import Rejected, RejectReason
from ftte.fileio import atomic_write
from ftte.transport.mqtt import BrokerSettings, Inbound, MqttLink, delivered
from ftte.wire import WireLimits, decode_update
from orchestrator.ingest.handoff import Handoff, encode_handoff
from orchestrator.model_shapes import check_model_shapes

log = logging.getLogger("ftte.ingest")

# No Local is a protocol error on a shared subscription (MQTT 5, 3.8.3.1); retained as
# published, so a live retained publish is told apart and passed to the owner to clear.
SHARED_UPDATES = SubscribeOptions(qos=1, retainAsPublished=True)
RETAINED_DETAIL = "retained publish on an update topic"


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker is told by the orchestrator that starts it."""

    broker: BrokerSettings  # the worker's own account
    fleet: str
    share_group: str
    shapes: dict[str, tuple[int, ...]]  # every parameter of the model
    buffer_shapes: dict[str, tuple[int, ...]]  # every buffer (batch norms' statistics)
    limits: WireLimits
    stats: Path  # where its counts go when it stops

    def to_json(self) -> dict[str, Any]:
        """As JSON values (paths as strings)."""
        b = self.broker
        return {
            "broker": [b.host, b.port, b.username, b.password, str(b.ca_file), b.keepalive_s],
            "fleet": self.fleet,
            "share_group": self.share_group,
            "shapes": self.shapes,
            "buffer_shapes": self.buffer_shapes,
            "limits": [getattr(self.limits, f) for f in _LIMIT_FIELDS],
            "stats": str(self.stats),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> WorkerSpec:
        """From ``to_json``."""
        host, port, username, password, ca_file, keepalive = doc["broker"]
        return cls(
            BrokerSettings(host, port, username, password, Path(ca_file), keepalive),
            doc["fleet"],
            doc["share_group"],
            {n: tuple(s) for n, s in doc["shapes"].items()},
            {n: tuple(s) for n, s in doc["buffer_shapes"].items()},
            WireLimits(**dict(zip(_LIMIT_FIELDS, doc["limits"], strict=True))),
            Path(doc["stats"]),
        )


_LIMIT_FIELDS = (
    "max_compressed_bytes",
    "max_decompressed_bytes",
    "max_tensors",
    "max_string_bytes",
    "max_rank",
)


class IngestWorker:
    """Decodes its share of the updates and hands them to the owner of the model."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.name = spec.broker.username
        self.counts: Counter[str] = Counter()
        self._handoff_topic = topics.ingest_topic(spec.fleet)
        self._waiting: dict[int, Inbound] = {}  # hand-off mid -> the device's message
        self._early: dict[int, int] = {}  # hand-off mid -> PUBACK reason, before it waited
        # Never held across a paho call: paho runs on_publish holding its own lock, which
        # publish also takes.
        self._lock = threading.Lock()
        self.link = MqttLink(
            spec.broker,
            subscriptions=[
                (topics.all_updates_filter(spec.fleet, spec.share_group), SHARED_UPDATES)
            ],
            manual_ack=True,
            persistent=False,
            on_published=self._handed_off,
        )

    def run(self, stop: threading.Event, ready: threading.Event | None = None) -> None:
        """Serve until ``stop``; ``ready`` is set once the subscription is in place."""
        self.link.start()
        try:
            while not stop.is_set():
                if ready is not None and not ready.is_set() and self.link.subscribed.is_set():
                    ready.set()
                try:
                    message = self.link.inbox.get(timeout=0.2)
                except queue.Empty:
                    continue
                self.handle(message)
        finally:
            self.link.stop()

    def handle(self, message: Inbound) -> None:
        """Hand one device message on; whatever fails is counted and acknowledged."""
        self.counts["received"] += 1
        try:
            data = encode_handoff(self.decode(message))
            mid = self.link.publish(self._handoff_topic, data, qos=1).mid
            with self._lock:  # its PUBACK may have come before publish returned
                reason = self._early.pop(mid, None)
                if reason is None:
                    self._waiting[mid] = message
            if reason is not None:
                self._settle(message, reason)
            return
        except Exception as exc:  # one message, whatever it raised, must not stop us
            kind = type(exc).__name__
            self.counts[f"failed_{kind}"] += 1
            log.error("handling a message on %s failed (%s: %s)", message.topic, kind, exc)
        self.link.ack(message)

    def decode(self, message: Inbound) -> Handoff:
        """The hand-off for one device message: its update, or why it is refused."""
        device = topics.parse(message.topic).device
        if device is None:
            raise ValueError(f"not a device topic: {message.topic}")
        payload = message.payload
        if message.retain:
            self.counts["retained"] += 1
            refused = Rejected(RejectReason.MALFORMED, RETAINED_DETAIL)
            return Handoff(self.name, device, len(payload), refused, payload, retained=True)
        try:
            update = decode_update(payload, self.spec.limits)
            check_model_shapes(update, self.spec.shapes, self.spec.buffer_shapes)
        except Rejected as exc:
            self.counts[f"refused_{exc.reason.value}"] += 1
            return Handoff(self.name, device, len(payload), exc, payload)
        self.counts["decoded"] += 1
        return Handoff(self.name, device, len(payload), update)

    def _handed_off(self, mid: int, reason: int) -> None:
        """The broker took a hand-off (or refused it): acknowledge the device's message."""
        with self._lock:
            message = self._waiting.pop(mid, None)
            if message is None:
                self._early[mid] = reason
                return
        self._settle(message, reason)

    def _settle(self, message: Inbound, reason: int) -> None:
        """Count the hand-off's fate and acknowledge the device's message to the broker."""
        outcome = "handed_off" if delivered(reason) else "handoff_undelivered"
        with self._lock:  # both threads come here
            self.counts[outcome] += 1
        if outcome != "handed_off":
            # No owner session subscribed, or the broker refused: the device resends what
            # the owner never acknowledged to it.
            log.warning("hand-off of an update on %s not delivered (%#04x)", message.topic, reason)
        self.link.ack(message)

    def write_stats(self) -> None:
        """Its counts, as JSON, to the spec's ``stats`` file."""
        doc = {"worker": self.name, "counts": dict(self.counts)}
        atomic_write(self.spec.stats, json.dumps(doc).encode(), 0o644)


def main(argv: list[str]) -> int:
    """Run one worker from its spec file until SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    spec = WorkerSpec.from_json(json.loads(Path(argv[0]).read_text()))
    worker = IngestWorker(spec)
    stop, ready = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    serving = threading.Thread(target=worker.run, args=(stop, ready), daemon=True)
    serving.start()
    while not ready.wait(0.1):
        if stop.is_set() or not serving.is_alive():
            break
    if ready.is_set():
        print("ready", flush=True)
    while serving.is_alive():
        serving.join(0.5)
    worker.write_stats()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
