"""The thin MQTT layer: one paho client, MQTT v5 over TLS, persistent session, a message queue.

Known paho pitfalls designed around here:
- a slow ``on_message`` blocks keep-alive, so the callback only puts the message on a queue
  and the owner's thread does the work;
- QoS 1 state lives in memory, so with ``manual_ack`` the owner acknowledges a message only
  after it has persisted what the message means;
- in MQTT v5 a session (subscriptions and queued QoS 1 messages) survives a disconnect only
  with a SessionExpiryInterval > 0, set on every CONNECT;
- the broker makes the client id the username (``use_username_as_clientid``), so the link
  connects with its username as client id: two links of one account share one session,
  and the second to connect takes it over from the first (Mosquitto 2.0.11 just closes
  the first one's socket, without a DISCONNECT saying why);
- paho never checks the broker's maximum packet size, so ``publish`` refuses packets over
  the limit itself instead of having the broker drop the connection. The limit's default
  is the broker's own (``ftte.wire.limits.mqtt_max_packet_bytes``);
- a PUBACK is not delivery: its reason code may say the broker refused the message (>= 0x80)
  or that nobody subscribes (0x10, the message is discarded unless retained), and even
  "success" is lost if the broker crashes before saving it or drops it from a full queue.
  The link reports the code with every acknowledgement and counts the refusals (>= 0x80);
  ``delivered`` tells delivery apart for messages that need a subscriber.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from ftte.wire.limits import MQTT_MAX_PACKET_BYTES, PUBLISH_PROPERTIES_BYTES, publish_packet_bytes

log = logging.getLogger(__name__)

DEFAULT_SESSION_EXPIRY_S = 7 * 24 * 3600  # a sleeping field device keeps its session a week
NO_MATCHING_SUBSCRIBERS = 0x10  # PUBACK: accepted, and discarded, for nobody subscribes


def delivered(reason: int) -> bool:
    """Whether a PUBACK reason code means the broker took the message for a subscriber."""
    return reason < 0x80 and reason != NO_MATCHING_SUBSCRIBERS


def reason_name(reason: int) -> str:
    """A PUBACK reason code as a counter label, e.g. ``no_matching_subscribers``."""
    try:
        name = str(ReasonCode(PacketTypes.PUBACK, identifier=reason))
    except (KeyError, ValueError):  # paho knows no name for it
        return f"reason_{reason:#04x}"
    return name.lower().replace(" ", "_")


@dataclass(frozen=True)
class BrokerSettings:
    """Where and how to connect: TLS to the fleet's broker with a username and password."""

    host: str
    port: int
    username: str
    password: str
    ca_file: Path
    keepalive_s: int = 30
    session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S
    max_packet_bytes: int = MQTT_MAX_PACKET_BYTES  # the generated broker's bound


@dataclass(frozen=True)
class Inbound:
    """A received message, waiting in the link's inbox for its owner."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    retain: bool


@dataclass(frozen=True)
class Will:
    """Last will: published by the broker if the client vanishes without a DISCONNECT."""

    topic: str
    payload: bytes
    retain: bool = True


class BrokerDrops:
    """Mosquitto's count of messages it dropped from full queues
    (``$SYS/broker/publish/messages/dropped``, ``ftte.topics.BROKER_DROPPED``, republished
    every ``sys_interval``), turned into increments across broker restarts."""

    def __init__(self) -> None:
        self.seen = 0  # the broker's count at its last publication
        self.total = 0  # drops noted so far, over every broker start
        self.readings = 0

    def note(self, payload: bytes) -> int:
        """The messages dropped since the last reading; a ValueError if unreadable."""
        text = payload.decode("ascii", errors="replace")
        if not (0 < len(text) <= 20 and text.isdigit()):
            raise ValueError(f"unreadable broker drop counter {text[:32]!r}")
        count = int(text)
        if count < self.seen:  # the broker restarted: its count did too
            self.seen = 0
        dropped, self.seen = count - self.seen, count
        self.total += dropped
        self.readings += 1
        return dropped


class PayloadTooLarge(ValueError):
    """A payload over the broker's maximum packet size; it was not sent."""


class MqttLink:
    """A connected client that resubscribes on every (re)connect and queues what arrives.

    ``subscriptions`` pairs a filter with a QoS or with paho's ``SubscribeOptions``.
    ``persistent`` keeps the session across disconnects; ``fresh_session`` also discards,
    at the first connect only, whatever session the broker still holds for this account.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        subscriptions: list[tuple[str, int | SubscribeOptions]],
        *,
        will: Will | None = None,
        manual_ack: bool = False,
        persistent: bool = True,
        fresh_session: bool = False,
        on_connect: Callable[[], None] | None = None,
        on_published: Callable[[int, int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.persistent = persistent
        self.fresh_session = fresh_session
        self.inbox: queue.Queue[Inbound] = queue.Queue()
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # this connection's subscriptions are in place
        self.connects = 0
        self.session_present = False  # whether the broker still had our session last connect
        self._refused: Counter[str] = Counter()  # PUBACKs refusing a publish, by reason
        self._refused_lock = threading.Lock()
        self._subscriptions = [
            (topic, o if isinstance(o, SubscribeOptions) else SubscribeOptions(qos=o))
            for topic, o in subscriptions
        ]
        self._on_connect_hook = on_connect
        self._on_published = on_published
        self._expiry_props: dict[int, Properties] = {}
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=settings.username,
            protocol=mqtt.MQTTv5,
            manual_ack=manual_ack,
        )
        client.username_pw_set(settings.username, settings.password)
        client.tls_set(ca_certs=str(settings.ca_file), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        # Unbounded in-flight QoS 1 would let a reconnect storm re-send everything at once.
        client.max_inflight_messages_set(20)
        if will is not None:
            client.will_set(will.topic, will.payload, qos=1, retain=will.retain)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        client.on_subscribe = self._handle_subscribe
        self.client = client

    def start(self) -> None:
        """Connect in the background; paho's loop thread reconnects with backoff."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry_s if self.persistent else 0
        clean_start: mqtt.CleanStartOption = not self.persistent
        if self.persistent and self.fresh_session:
            clean_start = mqtt.MQTT_CLEAN_START_FIRST_ONLY
        self.client.connect_async(
            self.settings.host,
            self.settings.port,
            keepalive=self.settings.keepalive_s,
            clean_start=clean_start,
            properties=props,
        )
        self.client.loop_start()

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until connected, up to ``timeout_s``; return whether it is."""
        return self.connected.wait(timeout_s)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        expiry_s: int | None = None,
    ) -> mqtt.MQTTMessageInfo:
        """Queue a publish with paho (sent now or after reconnect); refuses oversize packets."""
        props = None if expiry_s is None else self._expiry_properties(expiry_s)
        # Room for the largest properties is kept even when none are sent, so whether a
        # payload fits depends on its topic only: on the longest topic, the codec's limit.
        size = publish_packet_bytes(len(topic.encode()), len(payload), PUBLISH_PROPERTIES_BYTES)
        if size > self.settings.max_packet_bytes:
            raise PayloadTooLarge(
                f"{len(payload)} B to {topic} makes a {size} B packet, over the broker's max "
                f"packet size {self.settings.max_packet_bytes} B"
            )
        return self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)

    def _expiry_properties(self, expiry_s: int) -> Properties:
        """PUBLISH properties with a message expiry, built once per value: paho only reads
        them, and building them cost 60 us a publish (one per assignment)."""
        props = self._expiry_props.get(expiry_s)
        if props is None:
            props = Properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = expiry_s
            # Only the expiry is ever sent, so the room kept for properties holds it.
            assert len(props.pack()) <= PUBLISH_PROPERTIES_BYTES
            self._expiry_props[expiry_s] = props
        return props

    def refused_publishes(self) -> dict[str, int]:
        """PUBACKs so far that refused a publish (>= 0x80), by reason (``reason_name``)."""
        with self._refused_lock:
            return dict(self._refused)

    def ack(self, message: Inbound) -> None:
        """Acknowledge a QoS 1 message once its meaning is safely persisted."""
        if message.qos > 0:
            self.client.ack(message.mid, message.qos)

    def stop(self) -> None:
        """Disconnect cleanly (no last will) and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()

    def _handle_connect(
        self, client: mqtt.Client, _userdata: Any, flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("broker refused connection: %s", reason)
            return
        self.session_present = bool(flags.session_present)
        # Every time, session or not: a broker restarted from an old save may have lost it.
        if self._subscriptions:
            client.subscribe(self._subscriptions)
        else:
            self.subscribed.set()
        self.connects += 1
        self.connected.set()
        if self._on_connect_hook is not None:
            self._on_connect_hook()

    def _handle_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if reason != 0:
            log.info("disconnected from broker (%s); reconnecting", reason)

    def _handle_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.inbox.put(Inbound(msg.topic, bytes(msg.payload), msg.mid, msg.qos, bool(msg.retain)))

    def _handle_subscribe(
        self, _client: mqtt.Client, _userdata: Any, _mid: int, reasons: Any, _props: Any
    ) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused:
            log.warning("broker refused subscriptions: %s", refused)
        # The broker has queued any retained messages for these filters by now: whatever
        # is published from here on reaches this client after them.
        self.subscribed.set()

    def _handle_publish(
        self, _client: mqtt.Client, _userdata: Any, mid: int, reason: Any, _props: Any
    ) -> None:
        code = int(reason.value)
        # 0x10 is routine for a retained message nobody subscribes to yet (it is kept): only
        # the owner knows when it matters, as for an update (edge_agent.delivery).
        if code >= 0x80:
            name = reason_name(code)
            with self._refused_lock:
                self._refused[name] += 1
            log.warning("broker refused publish %d: %s", mid, name)
        if self._on_published is not None:
            self._on_published(mid, code)
