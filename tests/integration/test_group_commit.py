"""Group commit: the updates of one inbox batch and the assignments opened with it are made
durable with one fsync, and nothing of the batch is acknowledged (to the broker or to a
device) or sent before it."""

import numpy as np

from ftte import topics
from ftte.transport.mqtt import Inbound
from ftte.wire import encode_update
from orchestrator.checkpoint import DISPATCH, Journal, decode_dispatch
from orchestrator.localfleet import LocalFleet
from orchestrator.service import OrchestratorService
from tests.integration.fleet_helpers import spec

DEVICES = ("dev-0", "dev-1", "dev-2")


def service_with_answers(tmp_path, monkeypatch, events):
    """A service (not connected) with one answer per device, its syncs and sends recorded."""
    fleet = LocalFleet(spec(tmp_path, devices=len(DEVICES)))
    service = OrchestratorService(fleet.job_config())
    server = service.server
    for device_id in DEVICES:
        server.register(device_id, 10**9)
    assignments = server.dispatch(np.random.default_rng(0), now=0.0)
    assert sorted(a.device_id for a in assignments) == list(DEVICES)
    monkeypatch.setattr(service.journal, "sync", lambda: events.append("sync"))
    monkeypatch.setattr(service.link, "ack", lambda m: events.append(f"puback {m.mid}"))
    monkeypatch.setattr(
        service.link, "publish", lambda topic, *_a, **_k: events.append(f"publish {topic}")
    )
    batch = []
    for mid, a in enumerate(assignments, start=1):
        delta = {n: np.full(server.shapes[n], 0.01, np.float32) for n in a.trainable}
        payload = encode_update(a.answer(delta, 10, 0.5, 1000))
        batch.append(Inbound(topics.update_topic("local", a.device_id), payload, mid, 1, False))
    return service, batch


def test_a_batch_of_updates_is_synced_once_before_any_of_it_is_acknowledged(tmp_path, monkeypatch):
    events = []
    service, batch = service_with_answers(tmp_path, monkeypatch, events)
    server = service.server
    service.handle_batch(batch)
    assert events[0] == "sync" and events.count("sync") == 1
    assert sorted(events[1:]) == sorted(
        [f"puback {m.mid}" for m in batch]
        + [f"publish {topics.ack_topic('local', d)}" for d in DEVICES]
    )
    assert server.accepted == len(DEVICES)
    service.journal.close()
    # What the one sync made durable: every update of the batch.
    journaled = [t for t, _ in Journal(service.run_dir).entries() if "update" in t]
    assert sorted(journaled) == sorted(m.topic for m in batch)


def test_assignments_opened_with_a_batch_share_its_sync_and_are_sent_after_it(
    tmp_path, monkeypatch
):
    events = []
    service, batch = service_with_answers(tmp_path, monkeypatch, events)
    service.server.register("dev-3", 10**9)  # idle: the strategy starts it with the batch
    service.link.connected.set()
    service.handle_batch(batch)
    assert events.count("sync") == 1
    sent = [
        i for i, e in enumerate(events) if e == f"publish {topics.assign_topic('local', 'dev-3')}"
    ]
    assert len(sent) == 1 and sent[0] > events.index("sync")
    service.journal.close()
    records = [decode_dispatch(p) for t, p in Journal(service.run_dir).entries() if t == DISPATCH]
    assert "dev-3" in {o["device_id"] for r in records for o in r["opened"]}


def test_a_failed_sync_sends_no_journaled_acknowledgement_and_no_assignment(tmp_path, monkeypatch):
    events = []
    service, batch = service_with_answers(tmp_path, monkeypatch, events)
    service.server.register("dev-3", 10**9)
    service.link.connected.set()

    def failing_sync():
        raise OSError("disk gone")

    monkeypatch.setattr(service.journal, "sync", failing_sync)
    service.handle_batch(batch)
    # The broker is released (as for any message that failed), the devices keep their
    # updates and send them again; the assignments whose record is not durable are taken
    # back, not sent.
    assert sorted(events) == sorted(f"puback {m.mid}" for m in batch)
    assert service.failures == {"OSError": 1}
    assert service.server.in_flight() == 0 and "dev-3" in service.server.idle_devices()
    service.journal.close()
