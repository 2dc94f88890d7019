"""Size limits for decoding untrusted bytes, checked before anything is allocated.

This module is also the one home of the MQTT packet bound: the broker's
``max_packet_size``, ``BrokerSettings.max_packet_bytes``' default and the check in
``MqttLink.publish`` all come from ``mqtt_max_packet_bytes``, so a payload the codec
accepts always fits and a packet too big to hold one on any topic is refused by the
broker already.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from ftte import topics
from ftte.ids import MAX_ID_LENGTH

# The PUBLISH properties ftte sends at most, as paho encodes them: the one-byte property
# length, then the message expiry interval (identifier byte + four-byte integer).
PUBLISH_PROPERTIES_BYTES = 1 + 1 + 4


@dataclass(frozen=True)
class WireLimits:
    """Bounds on one message; defaults fit tiny-ML models (up to ~1M float32 parameters).

    The broker's ``max_packet_size`` is derived from ``max_compressed_bytes`` (see
    ``mqtt_max_packet_bytes``), so a packet too big for any valid payload is refused at
    the broker already.
    """

    max_compressed_bytes: int = 4 * 1024 * 1024
    max_decompressed_bytes: int = 16 * 1024 * 1024
    max_tensors: int = 256
    max_string_bytes: int = 256  # ids and tensor names
    max_rank: int = 8

    def __post_init__(self) -> None:
        for name in ("max_compressed_bytes", "max_decompressed_bytes", "max_tensors"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")


def longest_topic_bytes() -> int:
    """Length in bytes of the longest topic the topic scheme can build."""
    longest = "a" * MAX_ID_LENGTH
    kinds = cast(tuple[topics.Kind, ...], topics.DEVICE_KINDS)
    built = [topics.device_topic(longest, longest, kind) for kind in kinds]
    built.append(topics.model_topic(longest))
    built.append(topics.combined_topic(longest, longest))
    return max(len(t.encode()) for t in built)


def _varint_bytes(value: int) -> int:
    """Bytes of an MQTT variable byte integer (seven bits per byte)."""
    size = 1
    while value >= 128:
        value >>= 7
        size += 1
    return size


def publish_packet_bytes(topic_bytes: int, payload_bytes: int, properties_bytes: int = 1) -> int:
    """Size of an MQTT 5 PUBLISH packet with a packet id (QoS 1), fixed header included.

    ``properties_bytes`` is the encoded property block with its length prefix (1 when
    empty), as paho's ``Properties.pack()`` returns it. Mosquitto counts one to four bytes
    less (it leaves out the remaining-length field), so this bound is never too small.
    """
    # type byte, remaining length | topic length + topic, packet id, properties, payload
    remaining = 2 + topic_bytes + 2 + properties_bytes + payload_bytes
    return 1 + _varint_bytes(remaining) + remaining


def mqtt_max_packet_bytes(limits: WireLimits | None = None) -> int:
    """The MQTT packet bound: the codec's largest payload on the longest topic, QoS 1,
    with the largest properties ftte sends."""
    payload = (limits or WireLimits()).max_compressed_bytes
    return publish_packet_bytes(longest_topic_bytes(), payload, PUBLISH_PROPERTIES_BYTES)


MQTT_MAX_PACKET_BYTES = mqtt_max_packet_bytes()
