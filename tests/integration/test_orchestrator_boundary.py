"""No payload stops the orchestrator, live or on replay; FedAvg survives a restart mid-round."""

import numpy as np
import pytest

from broker.generate import ORCHESTRATOR_USER
from ftte import topics
from ftte.transport.mqtt import Inbound
from ftte.wire import encode_update
from ftte.wire.control import DeviceStatus
from ftte.wire.messages import Update
from orchestrator.checkpoint import Journal, load_state
from orchestrator.localfleet import LocalFleet
from orchestrator.service import OrchestratorService
from tests.fixtures.mosquitto import FLEET, Client
from tests.integration.fleet_helpers import ServiceThread, spec, wait_until
from tests.integration.test_bad_updates import FakeBroker

DEEP_JSON = b"[" * 2000 + b"]" * 2000
INFINITE_BUDGET = (
    b'{"state": "online", "device_id": "dev-0", "memory_budget_bytes": Infinity, '
    b'"compute_class": "x", "software_version": "0", "model_version": -1}'
)


@pytest.mark.fleet
def test_hostile_status_payloads_are_refused_counted_and_serving_goes_on(tmp_path):
    fleet = LocalFleet(spec(tmp_path, devices=3, max_versions=3))
    fleet.start_broker()
    job = ServiceThread(fleet)
    hostile = Client(FakeBroker(fleet), "dev-0")
    status = topics.status_topic(fleet.fleet.fleet.name, "dev-0")
    try:
        # Published before the orchestrator subscribes, they would reach nobody (0x10).
        wait_until(job.service.link.subscribed.is_set, 30, "the orchestrator's subscriptions")
        assert hostile.connect()
        assert hostile.publish(status, INFINITE_BUDGET) == 0
        assert hostile.publish(status, DEEP_JSON) == 0
        hostile.close()
        service = job.service
        wait_until(lambda: service.status_refused == {"malformed": 2}, 30, "two refusals")
        fleet.start_agents()
        result = job.wait(timeout=180)
    finally:
        fleet.stop()
    assert result.version == 3  # the job went on to its version limit
    assert service.job_state("running").rejected["status_malformed"] == 2
    assert not service.failures


@pytest.mark.fleet
def test_a_message_that_raises_while_handled_is_counted_set_aside_and_serving_goes_on(
    tmp_path, monkeypatch
):
    fleet = LocalFleet(spec(tmp_path, devices=3, max_versions=3))
    fleet.start_broker()
    job = ServiceThread(fleet)
    service = job.service
    register = service.server.register

    def register_failing_for_dev0(device_id, *args):
        if device_id == "dev-0":
            raise RuntimeError("a bug met while handling dev-0's birth")
        register(device_id, *args)

    monkeypatch.setattr(service.server, "register", register_failing_for_dev0)
    try:
        fleet.start_agents()
        result = job.wait(timeout=180)
    finally:
        fleet.stop()
    assert result.version == 3  # dev-1 and dev-2 carried the job to its version limit
    assert service.failures["RuntimeError"] >= 1 and "dev-0" not in service.server.devices
    kept = service.quarantine.files()
    assert kept and all("handler_error" in p.name for p in kept)


def test_a_journaled_update_that_raises_on_replay_is_set_aside_and_start_up_completes(
    tmp_path, monkeypatch
):
    fleet = LocalFleet(spec(tmp_path, devices=2))
    config = fleet.job_config()
    run_dir = config.job.run_dir
    run_dir.mkdir(parents=True)
    journal = Journal(run_dir)
    topic = topics.update_topic(fleet.fleet.fleet.name, "dev-0")
    journal.append(topic, b"first")
    journal.append(topic, b"second")
    journal.close()
    calls = []

    def admit(_self, device_id, payload):
        calls.append(payload)
        raise RuntimeError("a bug met while replaying")

    monkeypatch.setattr("orchestrator.server.TrainingServer.admit", admit)
    service = OrchestratorService(config)
    assert calls == [b"first", b"second"]  # the first failure did not stop the replay
    assert service.failures == {"RuntimeError": 2}
    assert len(service.quarantine.files()) == 2
    assert not list(Journal(run_dir).entries())  # checkpointed, so no replay loop on restart
    assert load_state(run_dir) is not None


ACCEPTED = (0x00, 0x10)  # success, or "no matching subscribers" (retained all the same)


@pytest.mark.parametrize("published", ["before-a-fresh-job", "while-running", "while-stopped"])
def test_a_retained_update_is_ignored_counted_and_cleared(fleet_broker, tmp_path, published):
    """Retained, it would be replayed to every new subscriber: each restart, each new job."""
    topic = topics.update_topic(FLEET, "dev-03")
    device = Client(fleet_broker, "dev-03")
    assert device.connect()
    birth = DeviceStatus("dev-03", 10**9, "test", "0", -1).encode()
    assert device.publish(topics.status_topic(FLEET, "dev-03"), birth, retain=True) in ACCEPTED
    if published == "before-a-fresh-job":
        assert device.publish(topic, b"hostile", retain=True) in ACCEPTED
    config = fleet_broker.job_config(tmp_path / "run")
    job = ServiceThread(config)
    if published == "while-stopped":  # the restarted job resumes its session: queued for it
        wait_until(lambda: "dev-03" in job.service.server.devices, 10, "dev-03's birth")
        job.stop.set()
        job.thread.join(30)
        assert device.publish(topic, b"hostile", retain=True) == 0
        job = ServiceThread(config)
        assert job.service.resumed
    service = job.service
    try:
        if published == "while-running":
            # Registered, so subscribed: what is published now is delivered live.
            wait_until(lambda: "dev-03" in service.server.devices, 10, "dev-03's birth")
            assert device.publish(topic, b"hostile", retain=True) == 0
        wait_until(lambda: service.retained_updates == 1, 10, "the retained update")
        # After the subscription, so after any second copy of the retained update: the
        # engine refuses this one (not an answer to anything), and nothing came twice.
        assert service.link.subscribed.wait(10)
        assert device.publish(topic, b"sentinel") == 0
        wait_until(lambda: service.server.rejected.total() == 1, 10, "the sentinel")
    finally:
        job.stop.set()
        job.thread.join(30)
    assert service.job_state("running").rejected == {"update_retained": 1, "malformed": 1}
    kept = [p.name for p in service.quarantine.files()]
    assert len(kept) == 2 and kept[0].endswith("-update_retained.msgpack")
    # Cleared: a new subscriber's first message is the device's next one, not the old.
    reader = Client(fleet_broker, ORCHESTRATOR_USER)  # the service has disconnected
    try:
        assert reader.connect() and reader.subscribe(topic) == 1
        assert device.publish(topic, b"second sentinel") == 0
        assert [m.payload for m in reader.wait_messages(1)] == [b"second sentinel"]
    finally:
        reader.close()
        device.close()


def test_a_retained_hostile_status_is_refused_at_start_and_serving_goes_on(fleet_broker, tmp_path):
    """Status topics stay retained (births): garbage a device left there is refused on each
    start, and the device's next birth still registers it."""
    status = topics.status_topic(FLEET, "dev-03")
    device = Client(fleet_broker, "dev-03")
    assert device.connect()
    assert device.publish(status, DEEP_JSON, retain=True) in ACCEPTED
    job = ServiceThread(fleet_broker.job_config(tmp_path / "run"))
    service = job.service
    try:
        wait_until(lambda: service.status_refused == {"malformed": 1}, 10, "the refusal")
        birth = DeviceStatus("dev-03", 10**9, "test", "0", -1).encode()
        assert device.publish(status, birth, retain=True) == 0
        wait_until(lambda: "dev-03" in service.server.devices, 10, "dev-03's birth")
        assert job.thread.is_alive() and not service.failures
    finally:
        device.close()
        job.stop.set()
        job.thread.join(30)


def test_a_live_message_that_raises_is_still_acknowledged(tmp_path, monkeypatch):
    fleet = LocalFleet(spec(tmp_path, devices=2))
    service = OrchestratorService(fleet.job_config())
    acked = []
    monkeypatch.setattr(service.link, "ack", acked.append)
    monkeypatch.setattr(service.server, "admit", lambda *_: (_ for _ in ()).throw(KeyError("boom")))
    message = Inbound(topics.update_topic("local", "dev-0"), b"x", mid=7, qos=1, retain=False)
    service.handle(message)
    assert acked == [message] and service.failures == {"KeyError": 1}


def answer(service: OrchestratorService, device_id: str, value: float) -> bytes:
    opened = service.server.devices[device_id].open
    delta = {n: np.full(service.server.shapes[n], value, np.float32) for n in opened.trainable}
    update = Update(
        device_id,
        f"{opened.assignment_id}.u",
        opened.assignment_id,
        opened.version,
        10,
        0.5,
        1000,
        delta,
    )
    return encode_update(update)


@pytest.mark.fleet
def test_fedavg_stopped_mid_round_resumes_the_round_after_a_restart(tmp_path):
    """The crash loop of issue 12: a graceful stop mid-round, a restart, answers arrive."""
    fleet = LocalFleet(
        spec(
            tmp_path,
            devices=3,
            strategy="fedavg",
            strategy_params={"clients_per_round": 3, "min_available_clients": 3},
        )
    )
    fleet.start_broker()
    name = fleet.fleet.fleet.name
    devices = {d: Client(FakeBroker(fleet), d) for d in ("dev-0", "dev-1", "dev-2")}
    first = ServiceThread(fleet)
    try:
        for device_id, client in devices.items():
            assert client.connect()
            client.subscribe(topics.assign_topic(name, device_id))
            birth = DeviceStatus(device_id, 10**9, "test", "0", -1).encode()
            client.publish(topics.status_topic(name, device_id), birth, retain=True)
        for client in devices.values():
            assert client.wait_messages(1, timeout=30)  # the round's assignments
        server = first.service.server
        wait_until(lambda: server.in_flight() == 3, 10, "a round of three")
        payloads = {d: answer(first.service, d, 0.01) for d in devices}
        devices["dev-0"].publish(topics.update_topic(name, "dev-0"), payloads["dev-0"])
        wait_until(lambda: server.accepted == 1, 20, "the first answer")
        first.stop.set()
        first.thread.join(30)
        assert not first.thread.is_alive() and first.result is not None
        second = ServiceThread(fleet)
        restored = second.service.server
        assert restored.accepted == 1 and restored.in_flight() == 2 and restored.version == 0
        for device_id in ("dev-1", "dev-2"):
            client = devices[device_id]
            client.publish(topics.update_topic(name, device_id), payloads[device_id])
        wait_until(lambda: restored.version == 1, 20, "the round to complete")
        assert second.thread.is_alive()
        assert restored.accepted == 3 and not restored.rejected
        assert not second.service.failures
        second.stop.set()
        second.thread.join(30)
    finally:
        for client in devices.values():
            client.close()
        fleet.broker.stop()
