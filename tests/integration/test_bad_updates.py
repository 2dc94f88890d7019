"""Bad updates over the wire, with a device's own credentials: counted, and the model untouched."""

import tomllib

import numpy as np
import zstandard

from ftte import topics
from ftte.wire import decode_assignment, encode_update
from ftte.wire.control import DeviceStatus
from ftte.wire.messages import Update
from orchestrator.localfleet import LocalFleet
from tests.fixtures.mosquitto import Client
from tests.integration.fleet_helpers import ServiceThread, spec, wait_until


class FakeBroker:
    """Adapts a LocalFleet to the test Client (port + credentials)."""

    def __init__(self, fleet: LocalFleet) -> None:
        self.files = fleet.files
        self.port = fleet.fleet.fleet.broker_port

    def password(self, user: str) -> str:
        with self.files.device_configs[user].open("rb") as f:
            return str(tomllib.load(f)["broker"]["password"])


def test_bad_updates_are_rejected_with_reasons_and_change_nothing(tmp_path):
    fleet = LocalFleet(spec(tmp_path, devices=2, strategy_params={"buffer_size": 3}))
    fleet.start_broker()
    job = ServiceThread(fleet)
    device = "dev-0"
    fleet_name = fleet.fleet.fleet.name
    client = Client(FakeBroker(fleet), device)
    try:
        assert client.connect()
        client.subscribe(topics.assign_topic(fleet_name, device))
        birth = DeviceStatus(device, 300_000, "test", "0", -1).encode()
        client.client.publish(topics.status_topic(fleet_name, device), birth, qos=1, retain=True)

        def assignment(n):
            """The n-th assignment: a refused answer to the open assignment frees the device,
            so it gets a new one; a payload that answers nothing leaves it waiting."""
            return decode_assignment(client.wait_messages(n, timeout=20)[n - 1].payload)

        first = assignment(1)
        server = job.service.server
        before = {n: a.copy() for n, a in server.params.items()}
        version = server.version
        shapes = {n: server.shapes[n] for n in first.trainable}

        def update(a, delta, update_id):
            return encode_update(
                Update(device, update_id, a.assignment_id, a.version, 10, 0.5, 1000, delta)
            )

        good = {n: np.full(s, 0.01, np.float32) for n, s in shapes.items()}
        nan = {n: np.full(s, np.nan, np.float32) for n, s in shapes.items()}
        other = next(n for n in server.params if n not in shapes)
        wrong = {other: np.zeros(server.shapes[other], np.float32)}
        topic = topics.update_topic(fleet_name, device)
        client.publish(topic, b"\x00not zstd at all")
        # Small on the wire, but its frame declares more than the codec will ever inflate.
        bomb = zstandard.ZstdCompressor().compress(bytes(17 * 1024 * 1024))
        client.publish(topic, bomb)
        # The first assignment is still open after the two payloads that answered nothing:
        # its NaN answer is refused as non-finite (not as unexpected) and frees the device.
        client.publish(topic, update(first, nan, "u-nan"))
        client.publish(topic, update(assignment(2), wrong, "u-wrong"))
        third = assignment(3)
        client.publish(topic, update(third, good, "u-good"))
        # Another answer to the answered assignment is a replay (the same one, a duplicate).
        client.publish(topic, update(third, good, "u-again"))
        expected = {
            "malformed": 1,
            "oversized": 1,
            "non_finite": 1,
            "wrong_slice": 1,
            "replayed": 1,
        }
        wait_until(lambda: dict(server.rejected) == expected, 20, f"rejections {expected}")
        assert server.accepted == 1
        assert server.version == version
        for name, value in before.items():
            np.testing.assert_array_equal(server.params[name], value)
    finally:
        client.close()
        job.stop.set()
        job.thread.join(30)
        fleet.broker.stop()
