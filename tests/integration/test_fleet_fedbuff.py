"""FedBuff end to end over TLS: the orchestrator and agent processes advance the model."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_agent.releases import CURRENT
from orchestrator.localfleet import LocalFleet
from tests.integration.fleet_helpers import UNREACHABLE, ServiceThread, spec, wait_until

pytestmark = pytest.mark.fleet

VERSIONS = 4
AGENT = Path(sys.executable).parent / "ftte-agent"


def config_path(fleet: LocalFleet) -> Path:
    return next(iter(fleet.files.device_configs.values()))


def line_protocol(path):
    """(measurement, tags, fields) per line of a telemetry file; values hold no spaces."""
    points = []
    for line in path.read_text().splitlines():
        series, fields, _timestamp = line.split(" ")
        measurement, *tags = series.split(",")
        points.append(
            (
                measurement,
                dict(t.split("=", 1) for t in tags),
                dict(f.split("=", 1) for f in fields.split(",")),
            )
        )
    return points


def test_fedbuff_fleet_advances_versions_on_updates_from_several_devices(tmp_path):
    fleet = LocalFleet(
        spec(
            tmp_path,
            devices=6,
            slow_fraction=0.0,  # equal devices: each gets its turn within a few versions
            strategy="fedbuff",
            target_accuracy=UNREACHABLE,
            max_versions=VERSIONS,
        )
    )
    fleet.start_broker()
    try:
        job = ServiceThread(fleet)
        fleet.start_agents()
        result = job.wait(timeout=120)
        # The job's best release reaches every running agent (retained on the release topic).
        served = [
            fleet.run_dir / "agents" / d / "releases" / CURRENT for d in fleet.files.device_configs
        ]
        wait_until(lambda: all(path.exists() for path in served), 30, "every agent's release")
        codes = fleet.stop_agents()
    finally:
        fleet.stop()
    assert result.version == VERSIONS
    assert set(codes.values()) == {0}
    points = line_protocol(job.service.run_dir / "telemetry.lp")
    versions = [int(f["version"].rstrip("i")) for m, _, f in points if m == "ftte_aggregation"]
    assert versions == list(range(1, VERSIONS + 1))
    updates = [tags for m, tags, _ in points if m == "ftte_update"]
    accepted = [t["device"] for t in updates if t["reason"] == "accepted"]
    assert len(accepted) == job.service.server.accepted
    assert len(set(accepted)) >= 3
    # The job's releases: the best by validation accuracy, and the last version, each loadable.
    releases = job.service.releases
    assert releases.last.version == VERSIONS
    assert releases.best.metrics["accuracy"] == max(s.metrics["accuracy"] for s in releases.kept())
    final = releases.load(releases.last)
    assert final.job == job.service.config.job.name and final.model == "digits"
    for name, value in job.service.server.params.items():
        assert (final.tensors[name] == value).all()
    # Federated evaluation: the agents measured the versions they were sent on held-out data.
    fleet_eval = job.service.server.fleet_evaluation.latest()
    assert fleet_eval is not None and 0.0 <= fleet_eval.metrics["accuracy"] <= 1.0
    assert fleet_eval.samples > 0 and fleet_eval.version < VERSIONS
    assert any(m == "ftte_fleet" for m, _, _ in points)
    # Every agent serves the best release; predicting with it on a device, torch-free, gives
    # the orchestrator's outputs for that release.
    best = releases.best
    for path in served:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == best.sha256
    x = job.service.server.task.validation.x[:50]
    np.savez(tmp_path / "windows.npz", x=x)
    run = subprocess.run(
        [AGENT, "--config", config_path(fleet), "predict", "--input", tmp_path / "windows.npz"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    served_scores = np.array([json.loads(line)["scores"] for line in run.stdout.splitlines()])
    model = job.service.server.task.model.make_model()
    for name, p in model.named_parameters():
        p.data = torch.from_numpy(releases.load(best).tensors[name])
    with torch.no_grad():
        reference = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(served_scores, reference, atol=1e-5)
