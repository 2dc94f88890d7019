"""``ftte gateway``: a site's pre-aggregating gateway process on the site's Mosquitto.

It subscribes to the site's device updates with its own account (``ftte_gateway_{site}``,
written by ``ftte broker init`` for a ``[[sites]]`` entry with ``pre_aggregate = true``),
hands each payload to the ``SiteCombiner`` and publishes what it flushes on the site's
``sum`` topic, which the bridge forwards to the central broker. The MQTT loop knows
nothing of the math; the combiner knows nothing of MQTT.

What it holds between flushes is in memory only: a gateway that dies loses at most one
flush window (G updates or T seconds). Devices keep an update in their outbox until the
orchestrator acknowledges it, so such updates are sent again after a reconnect.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from ftte import topics
from ftte.config import load_section, read_toml, resolve
from ftte.ids import validate_id
from ftte.tasks import load_model_spec
from ftte.transport.mqtt import BrokerSettings, Inbound, MqttLink
from ftte.wire.codec import decode_assignment, encode_combined
from ftte.wire.control import decode_status
from ftte.wire.messages import DeltaEncoding
from orchestrator.gateway import FlushPolicy, SiteCombiner
from orchestrator.influence import InfluenceSettings

log = logging.getLogger("ftte.gateway")


@dataclass(frozen=True)
class GatewaySection:
    """Which site this gateway serves, of which fleet, and the task its devices train."""

    site: str
    fleet: str
    task: str = "vibration"  # as fleet.toml's [fleet] task: the model's tensor shapes
    # How the sums travel: as the job's devices send their deltas (int8 for ftte).
    delta_encoding: DeltaEncoding = DeltaEncoding.INT8
    # As the job's [server] assignment_timeout_s: an update answering an assignment about
    # to time out goes up alone rather than risk its site's combined update.
    assignment_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        validate_id(self.site, "gateway.site")
        validate_id(self.fleet, "gateway.fleet")
        if not self.assignment_timeout_s > 0:
            raise ValueError("gateway.assignment_timeout_s must be positive: the job's value")


@dataclass(frozen=True)
class GatewayConfig:
    """The whole ``gateway.toml``; ``[influence]`` must match the job's ``[influence]``."""

    gateway: GatewaySection
    broker: BrokerSettings  # the site broker, with the gateway's account
    flush: FlushPolicy = field(default_factory=FlushPolicy)
    influence: InfluenceSettings = field(default_factory=InfluenceSettings)


def load_gateway_config(path: Path) -> GatewayConfig:
    """Read and validate a gateway file; relative paths are relative to the file."""
    config = load_section(GatewayConfig, read_toml(path), str(path), "")
    return replace(
        config, broker=replace(config.broker, ca_file=resolve(path, config.broker.ca_file))
    )


class GatewayService:
    """Consumes a site's device updates, publishes their combined form on flush."""

    def __init__(self, config: GatewayConfig) -> None:
        section = config.gateway
        shapes = load_model_spec(section.task).parameter_shapes()  # no data is built
        self.combiner = SiteCombiner(
            section.site,
            shapes,
            config.flush,
            config.influence,
            assignment_timeout_s=section.assignment_timeout_s,
        )
        self.topic = topics.combined_topic(section.fleet, section.site)
        self.encoding = section.delta_encoding
        self.sent_bytes: list[int] = []  # per combined update published
        self.failed: Counter[str] = Counter()  # messages whose handling raised, by exception
        self.retained_updates = 0  # stored publishes on update topics, ignored
        # The site broker carries only its own devices' topics. Assignments and last wills
        # tell the gateway which updates the orchestrator will take (SiteCombiner).
        fleet = section.fleet
        self.link = MqttLink(
            config.broker,
            subscriptions=[
                (topics.all_updates_filter(fleet), 1),
                (topics.all_assignments_filter(fleet), 1),
                (topics.all_status_filter(fleet), 1),
            ],
        )

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop``; what is held when it is set goes up first."""
        self.link.start()
        try:
            while not stop.is_set():
                now = time.monotonic()
                due_at = self.combiner.due_at()
                wait = 0.5 if due_at is None else max(0.0, min(0.5, due_at - now))
                message = self._next(wait)
                if message is not None:
                    self._receive(message.topic, message.payload, time.monotonic(), message.retain)
                if self.combiner.due(time.monotonic()):
                    self._flush()
            if self.combiner.held():
                self._flush()
        finally:
            self.link.stop()

    def _next(self, wait: float) -> Inbound | None:
        try:
            return self.link.inbox.get(timeout=wait)
        except queue.Empty:
            return None

    def _receive(self, topic: str, payload: bytes, now: float, retained: bool = False) -> None:
        """Hold one device message; whatever fails in handling it is counted and logged."""
        try:
            ref = topics.parse(topic)
            device_id = ref.device
            if device_id is None:
                raise ValueError(f"not a device topic: {topic}")
            if retained and ref.kind == "update":
                # Agents never retain updates: a stored one (handed to every new subscriber,
                # each restart of this gateway) is a device's trick, not an answer.
                self.retained_updates += 1
                log.warning("retained update from %s ignored", device_id)
                return
            if ref.kind == "assign":
                # Only its ids, version and slice count here: the model values, the bulk of
                # the message, are left unconverted.
                assignment = decode_assignment(payload, values=False)
                if assignment.device_id != device_id:
                    raise ValueError(f"assignment on {topic} names {assignment.device_id}")
                self.combiner.assigned(assignment, now)
                return
            if ref.kind == "status":
                if decode_status(payload) is None:
                    self.combiner.offline(device_id)
                return
            reason = self.combiner.add(device_id, payload, now)
        except Exception as exc:  # one message, whatever it raised, must not stop the gateway
            kind = type(exc).__name__
            self.failed[kind] += 1
            log.error("handling a message on %s failed (%s: %s)", topic, kind, exc)
            return
        if reason is not None:
            log.warning("update from %s refused at the gateway: %s", device_id, reason.value)

    def _flush(self) -> None:
        for combined in self.combiner.flush(time.monotonic()):
            payload = encode_combined(combined, self.encoding)
            self.link.publish(self.topic, payload, qos=1)
            self.sent_bytes.append(len(payload))
            log.info(
                "sent %s: %d updates of version %d, %d B",
                combined.combined_id,
                len(combined.members),
                combined.base_version,
                len(payload),
            )
