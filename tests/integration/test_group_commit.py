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


def test_a_batch_of_updates_is_synced_once_before_any_of_it_is_acknowledged(tmp_path, monkeypatch):
    fleet = LocalFleet(spec(tmp_path, devices=len(DEVICES)))
    service = OrchestratorService(fleet.job_config())
    server = service.server
    for device_id in DEVICES:
        server.register(device_id, 10**9)
    assignments = server.dispatch(np.random.default_rng(0), now=0.0)
    assert sorted(a.device_id for a in assignments) == list(DEVICES)
    events = []
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
