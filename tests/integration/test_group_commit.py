"""Group commit: the updates of one inbox batch are made durable with one fsync, and
nothing of the batch is acknowledged (to the broker or to a device) before it."""

import numpy as np

from ftte import topics
from ftte.transport.mqtt import Inbound
from ftte.wire import encode_update
from orchestrator.checkpoint import Journal
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


def test_a_failed_sync_sends_no_journaled_acknowledgement(tmp_path, monkeypatch):
    events = []
    service, batch = service_with_answers(tmp_path, monkeypatch, events)

    def failing_sync():
        raise OSError("disk gone")

    monkeypatch.setattr(service.journal, "sync", failing_sync)
    service.handle_batch(batch)
    # The broker is released (as for any message that failed), the devices keep their
    # updates and send them again.
    assert sorted(events) == sorted(f"puback {m.mid}" for m in batch)
    assert service.failures == {"OSError": 1}
    service.journal.close()
