"""One virtual device: the agent's protocol without torch, on a paho client the pool drives.

It does what ``edge_agent.agent`` does on the wire: connects with its own generated
credentials over TLS and a persistent session, leaves a last will, announces itself with a
retained birth naming the assignments it holds, decodes each assignment with the one codec,
answers it after a think time with a delta of exactly the assigned slice in the assigned
encoding, and delivers that update with the agent's own ``UpdateDelivery`` (kept until the
orchestrator acknowledges it on the ack topic; sent again on reconnect, after silence, or
when the assignment comes again). Training is replaced by the think time and random values:
what the orchestrator and broker see is what a device sends.

The outbox is in memory: the load generator's process is every device's disk, and a device
that drops out keeps its unacknowledged updates, as an agent's durable outbox does.
"""

from __future__ import annotations

import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.delivery import UpdateDelivery
from edge_agent.outbox import Outbox
from ftte import __version__, topics
from ftte.errors import Rejected
from ftte.transport.mqtt import DEFAULT_SESSION_EXPIRY_S, BrokerSettings
from ftte.wire import decode_assignment, encode_update
from ftte.wire.codec import encode_tensor
from ftte.wire.control import MAX_HELD, OFFLINE, DeviceStatus, Verdict, decode_ack
from ftte.wire.messages import Assignment, DeltaEncoding

TAKEN_REMEMBERED = 64  # as the agent: an assignment that comes again is answered once
MAX_INFLIGHT = 20  # as MqttLink: QoS 1 publishes awaiting a PUBACK per session
# MQTT v5 DISCONNECT reason 0x04: the broker publishes the will, as when a link dies.
DISCONNECT_WITH_WILL = ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")


class MemoryOutbox(Outbox):
    """The agent's outbox interface, kept in memory (no file, no fsync per update)."""

    def __init__(self) -> None:  # no folder: nothing touches the disk
        self._held: dict[str, bytes] = {}

    def put(self, update_id: str, payload: bytes) -> Path:
        """Hold one encoded update until it is acknowledged."""
        self._held[update_id] = payload
        return Path(update_id)

    def pending(self) -> list[tuple[str, bytes]]:
        """Every update not yet acknowledged, oldest first."""
        return list(self._held.items())

    def done(self, update_id: str) -> None:
        """Acknowledged: forget it."""
        self._held.pop(update_id, None)


class DeltaSource:
    """Random delta values per tensor shape, drawn once and shared by every device, with
    their wire forms per encoding.

    Drawing a fresh array per update would make the load generator, not the orchestrator,
    the bottleneck; the values only need the size and entropy of a real delta. For the same
    reason each is quantised once per encoding, not once per update (0.15 ms an update).
    """

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._by_shape: dict[tuple[int, ...], np.ndarray] = {}
        self._forms: dict[tuple[tuple[int, ...], DeltaEncoding], dict[str, Any]] = {}

    def values(self, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 array of ``shape`` with small normal values."""
        arr = self._by_shape.get(shape)
        if arr is None:
            arr = (self._rng.standard_normal(shape) * 1e-2).astype(np.float32)
            self._by_shape[shape] = arr
        return arr

    def form(self, shape: tuple[int, ...], encoding: DeltaEncoding) -> dict[str, Any]:
        """``values(shape)`` in its wire form as ``encoding``."""
        form = self._forms.get((shape, encoding))
        if form is None:
            form = self._forms[shape, encoding] = encode_tensor(self.values(shape), encoding)
        return form


@dataclass
class DeviceCounts:
    """What one device saw; the run sums them."""

    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0  # connections lost that the device did not end itself
    dropouts: int = 0  # churn: the device went away on purpose (will published)
    assignments: int = 0
    assignments_again: int = 0  # an assignment it already held, sent again
    assignments_refused: int = 0  # undecodable, or for another device
    answered: int = 0  # updates submitted
    acks: dict[str, int] = field(default_factory=dict)  # by verdict, for held updates
    acks_unknown: int = 0  # acknowledgements of updates no longer held
    acks_refused: int = 0  # acknowledgements that did not decode
    pubacks: dict[int, int] = field(default_factory=dict)  # by reason code


class VirtualDevice:
    """One device's session and protocol state; every method runs on the pool's thread."""

    def __init__(
        self,
        device_id: str,
        fleet: str,
        settings: BrokerSettings,
        tls: ssl.SSLContext,
        budget_bytes: int,
        deltas: DeltaSource,
        think_s: Callable[[], float],
        wake: Callable[[float, VirtualDevice], None],
        resend_after_s: float,
        resend_max_s: float,
    ) -> None:
        self.device_id = device_id
        self.settings = settings
        self.budget_bytes = budget_bytes
        self.counts = DeviceCounts()
        self.online = False  # between CONNACK and the loss of the connection
        self.connecting = False  # CONNECT sent, no CONNACK yet
        self.away = False  # dropped out on purpose (churn): do not reconnect yet
        self.answering = True  # false once the run stops taking new work
        self.due: Assignment | None = None  # the assignment being "trained"
        self.due_at = 0.0
        self.model_version = -1  # version of the model values this device holds
        self.received_at: dict[str, float] = {}  # assignment id -> when it arrived
        self.latencies: list[tuple[float, float]] = []  # (assignment->ack, submit->ack) s
        self.payload_sizes: list[int] = []  # bytes of each update submitted
        self._submitted_at: dict[str, float] = {}  # update id -> when submitted
        self._shapes: dict[str, tuple[int, ...]] = {}  # of the model values it holds
        self._taken: deque[str] = deque(maxlen=TAKEN_REMEMBERED)
        self._deltas = deltas
        self._think_s = think_s
        self._wake = wake
        self._assign = topics.assign_topic(fleet, device_id)
        self._ack = topics.ack_topic(fleet, device_id)
        self._status = topics.status_topic(fleet, device_id)
        self._update = topics.update_topic(fleet, device_id)
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5
        )
        client.username_pw_set(settings.username, settings.password)
        client.tls_set_context(tls)  # one context for all: loading the CA once, not per device
        client.max_inflight_messages_set(MAX_INFLIGHT)
        client.will_set(self._status, OFFLINE, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        self.client = client
        self.delivery = UpdateDelivery(
            MemoryOutbox(), self._publish_update, resend_after_s, resend_max_s, time.monotonic()
        )

    def connect(self) -> bool:
        """Open the session (blocking TCP and TLS handshake); False if that failed."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = DEFAULT_SESSION_EXPIRY_S  # as the agent's MqttLink
        try:
            if self.counts.connects + self.counts.connect_failures == 0:
                self.client.connect(
                    self.settings.host,
                    self.settings.port,
                    keepalive=self.settings.keepalive_s,
                    clean_start=False,
                    properties=props,
                )
            else:
                self.client.reconnect()
        except OSError:  # refused, timed out, TLS handshake failed (ssl.SSLError)
            self.counts.connect_failures += 1
            return False
        self.connecting = True
        return True

    def drop_out(self) -> None:
        """Go away as a device losing power would look: the broker publishes the will."""
        self.away = True
        self.counts.dropouts += 1
        self.client.disconnect(reasoncode=DISCONNECT_WITH_WILL)

    def come_back(self) -> bool:
        """Reconnect after a dropout."""
        self.away = False
        return self.connect()

    def close(self) -> None:
        """End the session cleanly (no will): the run is over."""
        self.away = True
        self.client.disconnect()

    def answer_if_due(self, now: float) -> None:
        """Submit the answer to the assignment whose think time is over."""
        if self.due is not None and now >= self.due_at:
            assignment, self.due = self.due, None
            self._answer(assignment, now)

    # -- the protocol ------------------------------------------------------------------

    def _answer(self, assignment: Assignment, now: float) -> None:
        shapes = {name: self._shapes[name] for name in assignment.trainable}
        encoding = assignment.train.delta_encoding
        delta = {name: self._deltas.values(shape) for name, shape in shapes.items()}
        forms = {name: self._deltas.form(shape, encoding) for name, shape in shapes.items()}
        update = assignment.answer(delta, num_samples=60, loss=1.0, peak_mem_bytes=0)
        payload = encode_update(update, encoding, delta_forms=forms)
        self._submitted_at[update.update_id] = now
        self.payload_sizes.append(len(payload))
        self.counts.answered += 1
        self.delivery.submit(update.update_id, assignment.assignment_id, payload, now)

    def _publish_update(self, payload: bytes) -> int:
        return int(self.client.publish(self._update, payload, qos=1).mid)

    def _birth(self) -> None:
        held = [*self.delivery.held(), *([self.due.assignment_id] if self.due else [])]
        status = DeviceStatus(
            device_id=self.device_id,
            memory_budget_bytes=self.budget_bytes,
            compute_class="loadgen",
            software_version=__version__,
            model_version=self.model_version,
            assignments=tuple(held[-MAX_HELD:]),
        )
        self.client.publish(self._status, status.encode(), qos=1, retain=True)

    def _handle_assignment(self, payload: bytes, now: float) -> None:
        try:
            # Every check of the agent's decoding but the values' (random deltas answer).
            assignment = decode_assignment(payload, values=False)
        except Rejected:
            self.counts.assignments_refused += 1
            return
        if assignment.device_id != self.device_id:
            self.counts.assignments_refused += 1
            return
        if assignment.assignment_id in self._taken:
            # As the agent: trained once; a held answer means the orchestrator lacks it.
            self.counts.assignments_again += 1
            self.delivery.resend_answer(assignment.assignment_id, now)
            return
        self._taken.append(assignment.assignment_id)
        self.counts.assignments += 1
        for name, value in assignment.tensors.items():
            self._shapes[name] = value.shape
        self.model_version = assignment.version
        if not self.answering:
            return
        self.received_at[assignment.assignment_id] = now
        self.due, self.due_at = assignment, now + self._think_s()
        self._wake(self.due_at, self)

    def _handle_ack(self, payload: bytes, now: float) -> None:
        try:
            ack = decode_ack(payload)
        except Rejected:
            self.counts.acks_refused += 1
            return
        entry = self.delivery.on_ack(ack)
        if entry is None:
            self.counts.acks_unknown += 1
            return
        verdict = ack.verdict.value
        self.counts.acks[verdict] = self.counts.acks.get(verdict, 0) + 1
        received = self.received_at.pop(entry.assignment_id, None)
        submitted = self._submitted_at.pop(ack.update_id, None)
        if ack.verdict is Verdict.JOURNALED and received is not None and submitted is not None:
            self.latencies.append((now - received, now - submitted))

    # -- paho callbacks ----------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        self.connecting = False
        if reason.is_failure:
            self.counts.connect_failures += 1
            return
        self.online = True
        self.counts.connects += 1
        # Every time, as the agent's link: a broker restarted from an old save may have
        # lost the session. The broker handles SUBSCRIBE before the birth that follows.
        client.subscribe([(self._assign, 1), (self._ack, 1)])
        self._birth()
        self.delivery.on_connect(time.monotonic())

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, _reason: Any, _props: Any
    ) -> None:
        if self.online and not self.away:
            self.counts.disconnects += 1
        self.online = self.connecting = False

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        if msg.topic == self._assign:
            self._handle_assignment(bytes(msg.payload), now)
        elif msg.topic == self._ack:
            self._handle_ack(bytes(msg.payload), now)

    def _on_publish(
        self, _client: mqtt.Client, _userdata: Any, mid: int, reason: Any, _props: Any
    ) -> None:
        code = int(reason.value)
        self.counts.pubacks[code] = self.counts.pubacks.get(code, 0) + 1
        self.delivery.on_published(mid, code, time.monotonic())
