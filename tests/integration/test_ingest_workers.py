"""Sharded ingest against the generated Mosquitto: two worker processes share the devices'
update subscription (MQTT v5 ``$share/``), each with its own broker account, decode and
check the updates and hand them to the one orchestrator that owns the model; a hostile
payload is refused in a worker and counted; a killed worker is started again; every update
is accepted exactly once; after a crash the journal's hand-offs apply again."""

import json
import os
import signal

import numpy as np
import pytest

from ftte import topics
from ftte.loadgen.run import LoadConfig, LoadRun, sessions_from_broker_dir
from ftte.transport.mqtt import Inbound, MqttLink
from ftte.wire import decode_assignment, decode_update, encode_update
from ftte.wire.control import DeviceStatus
from ftte.wire.messages import DeltaEncoding
from orchestrator.ingest.handoff import Handoff, encode_handoff
from orchestrator.localfleet import LocalFleet
from orchestrator.service import OrchestratorService
from tests.integration.fleet_helpers import UNREACHABLE, ServiceThread, spec, wait_until

pytestmark = pytest.mark.fleet

DEVICES = 30
WORKERS = 2


def test_updates_reach_the_model_through_two_workers_each_counted_once(tmp_path):
    fleet = LocalFleet(
        spec(
            tmp_path,
            devices=DEVICES,
            target_accuracy=UNREACHABLE,
            max_versions=10**6,
            ingest_workers=WORKERS,
        )
    )
    fleet.start_broker()
    job = ServiceThread(fleet)  # starts the workers before it subscribes
    service = job.service
    *honest, hostile = sessions_from_broker_dir(fleet.files.out_dir)
    link = MqttLink(hostile.broker, subscriptions=[])
    try:
        wait_until(service.link.subscribed.is_set, 30, "the orchestrator's subscriptions")
        # A worker killed outright is started again by the orchestrator and takes its share.
        workers = service.workers
        assert workers is not None
        first = workers.pids()
        os.kill(first[0], signal.SIGKILL)
        wait_until(lambda: workers.restarts == [1, 0] and workers.alive() == 2, 20, "a restart")
        assert workers.pids()[0] != first[0] and workers.pids()[1] == first[1]
        config = LoadConfig(duration_s=3.0, think_s=0.1, drain_s=30.0)
        results = LoadRun(honest, config).run()
        # The hostile device is known (its birth reached the orchestrator), then sends bytes
        # that are no update: refused in whichever worker the broker hands them to.
        link.start()
        assert link.wait_connected(10)
        birth = DeviceStatus(hostile.device_id, 10**9, "demo", "test", -1)
        link.publish(
            topics.status_topic("local", hostile.device_id), birth.encode()
        ).wait_for_publish(5)
        wait_until(lambda: hostile.device_id in service.server.devices, 10, "the hostile birth")
        garbage = b"\x28\xb5\x2f\xfd not a frame" * 20
        link.publish(topics.update_topic("local", hostile.device_id), garbage).wait_for_publish(5)
        wait_until(lambda: service.server.rejected["malformed"] == 1, 10, "the refusal")
    finally:
        link.stop()
        job.stop.set()
        job.thread.join(30)
        fleet.stop()
    submitted = results["submitted"]
    assert submitted > DEVICES and results["lost"] == 0
    assert results["acks"] == {"journaled": submitted}
    # Each update accepted once, and nothing else refused (no duplicate, no unexpected).
    assert service.server.accepted == submitted
    assert dict(service.server.rejected) == {"malformed": 1}
    assert service.delivery["ack_journaled"] == submitted
    # Every hand-off came from one of the two workers, and each took a share.
    assert sorted(service.handed_off) == ["ftte_ingest_1", "ftte_ingest_2"]
    assert min(service.handed_off.values()) > 0
    assert sum(service.handed_off.values()) == submitted + results["resent"] + 1
    # The workers' own counts (written when they stopped): the refusal happened in one.
    stats = [
        json.loads((service.run_dir / "ingest" / f"worker-{k}.stats.json").read_text())["counts"]
        for k in (1, 2)
    ]
    assert sum(s.get("refused_malformed", 0) for s in stats) == 1
    assert sum(s.get("decoded", 0) for s in stats) == submitted + results["resent"]
    assert sum(s.get("handed_off", 0) for s in stats) == submitted + results["resent"] + 1
    assert not any(k.startswith("failed_") for s in stats for k in s)


def test_a_journaled_hand_off_is_applied_again_after_a_crash(tmp_path, monkeypatch):
    fleet = LocalFleet(spec(tmp_path, devices=3))
    service = OrchestratorService(fleet.job_config())
    sent: list[tuple[str, bytes]] = []
    monkeypatch.setattr(service.link, "ack", lambda _m: None)
    monkeypatch.setattr(service.link, "publish", lambda t, p, **_k: sent.append((t, p)))
    service.link.connected.set()
    for device_id in ("dev-0", "dev-1", "dev-2"):
        service.server.register(device_id, 10**9)
    service.handle_batch([])  # opens, journals and sends one assignment each
    assignments = [decode_assignment(p) for t, p in sent if t.endswith("/assign")]
    assert len(assignments) == 3
    handoffs = []
    for mid, a in enumerate(assignments, start=1):
        delta = {n: np.full(service.server.shapes[n], 0.01, np.float32) for n in a.trainable}
        payload = encode_update(a.answer(delta, 10, 0.5, 1000), DeltaEncoding.INT8)
        handoff = Handoff("ftte_ingest_1", a.device_id, len(payload), decode_update(payload))
        handoffs.append(
            Inbound(topics.ingest_topic("local"), encode_handoff(handoff), mid, 1, False)
        )
    service.handle_batch(handoffs)
    assert service.server.accepted == 3
    service.journal.close()  # the process dies here: no checkpoint, only the journal
    again = OrchestratorService(fleet.job_config())
    assert again.server.accepted == 3 and dict(again.server.rejected) == {}
    again.journal.close()
