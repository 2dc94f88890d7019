"""The deploy health check: a device's retained online status, read through the real broker."""

from dataclasses import replace

import pytest

from ftte import topics
from ftte.wire.control import OFFLINE, DeviceStatus
from orchestrator.status import load_broker_account, wait_online
from tests.fixtures.mosquitto import FLEET, Client

ACCEPTED = (0x00, 0x10)  # success, or "no matching subscribers" (retained all the same)


def _announce(fleet_broker, payload: bytes) -> None:
    device = Client(fleet_broker, "dev-01")
    device.connect()
    try:
        topic = topics.status_topic(FLEET, "dev-01")
        assert device.publish(topic, payload, retain=True) in ACCEPTED
    finally:
        device.close()


def _account(fleet_broker):
    account = load_broker_account(fleet_broker.files.operator_credentials)
    assert account.username == "ftte_operator"
    return replace(account, host="127.0.0.1", port=fleet_broker.port)


def _birth(version: str) -> bytes:
    return DeviceStatus("dev-01", 300_000, "pi-zero-2", version, -1).encode()


def test_wait_online_returns_the_retained_birth(fleet_broker):
    _announce(fleet_broker, _birth("0.1.0"))
    status = wait_online(_account(fleet_broker), FLEET, "dev-01", 10.0, "0.1.0")
    assert (status.device_id, status.compute_class) == ("dev-01", "pi-zero-2")


def test_wait_online_times_out_on_the_old_version_or_offline(fleet_broker):
    _announce(fleet_broker, _birth("0.0.9"))
    with pytest.raises(TimeoutError, match=r"online with version 0\.0\.9"):
        wait_online(_account(fleet_broker), FLEET, "dev-01", 2.0, "0.1.0")
    _announce(fleet_broker, OFFLINE)
    with pytest.raises(TimeoutError, match="saw offline"):
        wait_online(_account(fleet_broker), FLEET, "dev-01", 2.0)
