"""One MQTT packet bound, derived from the codec's limit: publish check, broker and settings."""

import re
import socket
from pathlib import Path

import pytest

from broker.generate import init_broker
from ftte import topics
from ftte.ids import MAX_ID_LENGTH, validate_id
from ftte.transport.mqtt import BrokerSettings, MqttLink, PayloadTooLarge
from ftte.wire.limits import (
    MQTT_MAX_PACKET_BYTES,
    WireLimits,
    longest_topic_bytes,
    mqtt_max_packet_bytes,
)
from tests.fixtures.mosquitto import make_fleet

LONGEST = "a" * MAX_ID_LENGTH
LONGEST_TOPIC = topics.update_topic(LONGEST, LONGEST)
CODEC_LIMIT = WireLimits().max_compressed_bytes


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_broker(make_fleet(), tmp_path_factory.mktemp("broker")).ca_cert


def unstarted_link(ca_file: Path) -> MqttLink:
    """A link that never connects: paho frames and queues what is published."""
    settings = BrokerSettings("127.0.0.1", 1, "dev-00", "secret", ca_file)
    return MqttLink(settings, [])


def test_longest_id_is_the_longest_the_id_rule_accepts():
    validate_id(LONGEST, "device id")
    with pytest.raises(ValueError, match="1-64"):
        validate_id(LONGEST + "a", "device id")


def test_the_longest_topic_is_a_device_topic_with_the_longest_ids():
    assert len(LONGEST_TOPIC) == longest_topic_bytes() == 148


def test_the_bound_is_the_codec_limit_plus_mqtt_framing_on_the_longest_topic():
    # type byte, 4-byte remaining length, 2+148 topic, packet id, 1+5 properties
    assert MQTT_MAX_PACKET_BYTES == CODEC_LIMIT + 1 + 4 + 2 + 148 + 2 + 6 == 4_194_467


def test_the_bound_follows_the_codec_limit():
    bigger = WireLimits(max_compressed_bytes=2 * CODEC_LIMIT)
    assert mqtt_max_packet_bytes(bigger) - MQTT_MAX_PACKET_BYTES == CODEC_LIMIT


def test_broker_settings_default_to_the_derived_bound(ca_file):
    assert BrokerSettings("h", 1, "u", "p", ca_file).max_packet_bytes == MQTT_MAX_PACKET_BYTES


def test_a_payload_of_the_codec_limit_on_the_longest_topic_is_published(ca_file):
    link = unstarted_link(ca_file)
    link.publish(LONGEST_TOPIC, bytes(CODEC_LIMIT), expiry_s=2**32 - 1)


def test_one_byte_over_the_codec_limit_is_refused_before_sending(ca_file):
    link = unstarted_link(ca_file)
    with pytest.raises(PayloadTooLarge, match="over the broker's max packet size"):
        link.publish(LONGEST_TOPIC, bytes(CODEC_LIMIT + 1))


def test_the_formula_counts_every_byte_paho_frames(ca_file, monkeypatch):
    link = unstarted_link(ca_file)
    framed: list[bytes] = []
    # paho frames a PUBLISH only with a socket; one end of a socketpair stands in, and the
    # framed packet is caught on its way to the send queue.
    ours, theirs = socket.socketpair()
    monkeypatch.setattr(link.client, "_sock", ours)
    monkeypatch.setattr(
        link.client, "_packet_queue", lambda _cmd, packet, *_: framed.append(bytes(packet))
    )
    try:
        link.publish(LONGEST_TOPIC, bytes(CODEC_LIMIT), expiry_s=2**32 - 1)
    finally:
        ours.close()
        theirs.close()
    assert [len(p) for p in framed] == [MQTT_MAX_PACKET_BYTES]


def test_generated_broker_config_uses_the_derived_bound(tmp_path):
    files = init_broker(make_fleet(), tmp_path)
    (size,) = re.findall(r"^max_packet_size (\d+)$", files.config.read_text(), re.MULTILINE)
    assert int(size) == MQTT_MAX_PACKET_BYTES
