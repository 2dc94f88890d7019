"""The generated broker config, enforced by a real Mosquitto: TLS, passwords, per-device ACL."""

import socket

import pytest

from ftte import topics
from tests.fixtures.mosquitto import FLEET, Client

NOT_AUTHORIZED = 0x87
ACCEPTED = (0x00, 0x10)  # success, or "no matching subscribers"


@pytest.fixture
def clients(fleet_broker):
    made = []

    def connect(user, password=None):
        c = Client(fleet_broker, user, password)
        c.connect()
        made.append(c)
        return c

    yield connect
    for c in made:
        c.close()


def test_device_update_reaches_the_orchestrator(clients):
    orch = clients("ftte_orchestrator")
    assert orch.subscribe(topics.all_updates_filter(FLEET)) == 1
    dev = clients("dev-00")
    assert dev.publish(topics.update_topic(FLEET, "dev-00"), b"delta") == 0
    assert [m.payload for m in orch.wait_messages(1)] == [b"delta"]


def test_device_cannot_publish_to_another_devices_update_topic(clients):
    orch = clients("ftte_orchestrator")
    orch.subscribe(topics.all_updates_filter(FLEET))
    dev = clients("dev-00")
    assert dev.publish(topics.update_topic(FLEET, "dev-01"), b"forged") == NOT_AUTHORIZED
    # One client's QoS 1 messages arrive in order: the sentinel comes after anything forged.
    assert dev.publish(topics.update_topic(FLEET, "dev-00"), b"sentinel") == 0
    assert [m.payload for m in orch.wait_messages(1)] == [b"sentinel"]


def test_device_cannot_read_another_devices_assign_topic(clients):
    dev = clients("dev-00")
    # Mosquitto grants the subscription and enforces the ACL on delivery instead.
    dev.subscribe(topics.assign_topic(FLEET, "dev-01"))
    assert dev.subscribe(topics.assign_topic(FLEET, "dev-00")) == 1
    orch = clients("ftte_orchestrator")
    assert orch.publish(topics.assign_topic(FLEET, "dev-01"), b"secret slice") == 0
    # Published after the secret on the same connection, so delivered after it, if at all.
    assert orch.publish(topics.assign_topic(FLEET, "dev-00"), b"sentinel") == 0
    assert [m.payload for m in dev.wait_messages(1)] == [b"sentinel"]


def test_device_reads_its_own_assign_topic(clients):
    dev = clients("dev-00")
    assert dev.subscribe(topics.assign_topic(FLEET, "dev-00")) == 1
    clients("ftte_orchestrator").publish(topics.assign_topic(FLEET, "dev-00"), b"slice")
    assert [m.payload for m in dev.wait_messages(1)] == [b"slice"]


def test_operator_reads_status_and_model(clients):
    dev = clients("dev-00")
    status = topics.status_topic(FLEET, "dev-00")
    assert dev.publish(status, b"birth", retain=True) in ACCEPTED
    orch = clients("ftte_orchestrator")
    assert orch.publish(topics.model_topic(FLEET), b"job state", retain=True) in ACCEPTED
    operator = clients("ftte_operator")
    assert operator.subscribe(topics.all_status_filter(FLEET)) == 1
    assert operator.subscribe(topics.model_topic(FLEET)) == 1
    assert sorted(m.payload for m in operator.wait_messages(2)) == [b"birth", b"job state"]


def test_operator_cannot_read_updates_or_assignments(clients):
    operator = clients("ftte_operator")
    for topic in (topics.all_updates_filter(FLEET), topics.assign_topic(FLEET, "dev-00")):
        operator.subscribe(topic)  # granted; the ACL is enforced on delivery
    assert operator.subscribe(topics.all_status_filter(FLEET)) == 1
    dev = clients("dev-00")
    assert dev.publish(topics.update_topic(FLEET, "dev-00"), b"delta") in ACCEPTED
    orch = clients("ftte_orchestrator")
    assert orch.publish(topics.assign_topic(FLEET, "dev-00"), b"slice") in ACCEPTED
    # Published after both secrets and acknowledged after them, so delivered after them.
    assert dev.publish(topics.status_topic(FLEET, "dev-00"), b"sentinel") == 0
    assert [m.payload for m in operator.wait_messages(1)] == [b"sentinel"]


@pytest.mark.parametrize(
    "topic",
    [
        topics.model_topic(FLEET),
        topics.release_topic(FLEET),
        topics.status_topic(FLEET, "dev-00"),
        topics.assign_topic(FLEET, "dev-00"),
        topics.update_topic(FLEET, "dev-00"),
    ],
    ids=["model", "release", "status", "assign", "update"],
)
def test_operator_cannot_publish(clients, topic):
    assert clients("ftte_operator").publish(topic, b"x") == NOT_AUTHORIZED


def test_only_the_orchestrator_publishes_the_release_every_device_reads(clients):
    assert clients("dev-01").publish(topics.release_topic(FLEET), b"forged") == NOT_AUTHORIZED
    orch = clients("ftte_orchestrator")
    assert orch.publish(topics.release_topic(FLEET), b"release", retain=True) in ACCEPTED
    dev = clients("dev-00")
    assert dev.subscribe(topics.release_topic(FLEET)) == 1
    assert [m.payload for m in dev.wait_messages(1)] == [b"release"]


def test_orchestrator_cannot_publish_device_status(clients):
    orch = clients("ftte_orchestrator")
    assert orch.publish(topics.status_topic(FLEET, "dev-00"), b"forged") == NOT_AUTHORIZED


def test_unknown_user_cannot_connect(fleet_broker):
    c = Client(fleet_broker, "intruder", "guess")
    try:
        assert not c.connect()
        assert c.refused is not None
    finally:
        c.close()


def test_wrong_password_cannot_connect(fleet_broker):
    c = Client(fleet_broker, "dev-00", "not-the-password")
    try:
        assert not c.connect()
    finally:
        c.close()


def test_plain_tcp_without_tls_is_refused(fleet_broker):
    # An MQTT CONNECT in clear text: the TLS listener must not answer with a CONNACK.
    connect = bytes.fromhex("101000044d5154540402003c0004746573740000")
    with socket.create_connection(("127.0.0.1", fleet_broker.port), timeout=2) as s:
        s.sendall(connect)
        s.settimeout(2)
        try:
            reply = s.recv(16)
        except (TimeoutError, ConnectionResetError):
            reply = b""
    assert not reply.startswith(b"\x20")  # 0x20 is CONNACK


def test_device_reads_only_its_own_ack_topic(clients):
    dev = clients("dev-00")
    dev.subscribe(topics.ack_topic(FLEET, "dev-01"))  # granted; the ACL filters delivery
    assert dev.subscribe(topics.ack_topic(FLEET, "dev-00")) == 1
    orch = clients("ftte_orchestrator")
    assert orch.publish(topics.ack_topic(FLEET, "dev-01"), b"not yours") == 0
    assert orch.publish(topics.ack_topic(FLEET, "dev-00"), b"sentinel") == 0
    assert [m.payload for m in dev.wait_messages(1)] == [b"sentinel"]


def test_device_cannot_forge_an_acknowledgement(clients):
    dev = clients("dev-00")
    assert dev.subscribe(topics.ack_topic(FLEET, "dev-00")) == 1
    other = clients("dev-01")
    assert other.publish(topics.ack_topic(FLEET, "dev-00"), b"forged") == NOT_AUTHORIZED
    assert dev.publish(topics.ack_topic(FLEET, "dev-00"), b"own") == NOT_AUTHORIZED
    orch = clients("ftte_orchestrator")
    assert orch.publish(topics.ack_topic(FLEET, "dev-00"), b"sentinel") == 0
    assert [m.payload for m in dev.wait_messages(1)] == [b"sentinel"]
