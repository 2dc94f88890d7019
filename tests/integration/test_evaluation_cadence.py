"""The service evaluates every N versions or T seconds, not after every aggregation; the
job's last version is evaluated before it ends, and every version has its telemetry point."""

from dataclasses import replace

import numpy as np

from ftte import topics
from ftte.transport.mqtt import Inbound
from ftte.wire import encode_update
from orchestrator.localfleet import LocalFleet
from orchestrator.service import OrchestratorService
from tests.integration.fleet_helpers import spec

DEVICES = ("dev-0", "dev-1", "dev-2")


def test_versions_are_evaluated_every_n_and_the_last_one_at_the_end(tmp_path, monkeypatch):
    fleet = LocalFleet(spec(tmp_path, devices=3, strategy_params={"buffer_size": 1}))
    config = fleet.job_config()
    job = replace(config.job, evaluate_every=2, evaluate_every_s=3600.0)
    service = OrchestratorService(replace(config, job=job))
    server = service.server
    evaluated = []
    evaluate = server.evaluate
    monkeypatch.setattr(
        server, "evaluate", lambda: (evaluated.append(server.version), evaluate())[1]
    )
    for device_id in DEVICES:
        server.register(device_id, 10**9)
    batch = []
    for mid, a in enumerate(server.dispatch(np.random.default_rng(0), now=0.0), start=1):
        delta = {n: np.full(server.shapes[n], 0.01, np.float32) for n in a.trainable}
        payload = encode_update(a.answer(delta, 10, 0.5, 1000))
        batch.append(Inbound(topics.update_topic("local", a.device_id), payload, mid, 1, False))
    service.handle_batch(batch)
    assert server.version == 3  # one version per update (K = 1)
    assert evaluated == [2]
    service._finish()  # what run() does when the job ends
    assert evaluated == [2, 3] and service.releases.last.version == 3
    assert [v for _, v, _ in service.history] == [2, 3]
    service.telemetry.close()
    points = (service.run_dir / "telemetry.lp").read_text().splitlines()
    aggregations = [p for p in points if p.startswith("ftte_aggregation")]
    assert len(aggregations) == 3
    assert ["val_accuracy" in p for p in aggregations] == [False, True, True]
    service.journal.close()
