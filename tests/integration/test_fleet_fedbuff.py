"""FedBuff end to end over TLS: the orchestrator and agent processes advance the model."""

import pytest

from orchestrator.localfleet import LocalFleet
from tests.integration.fleet_helpers import UNREACHABLE, ServiceThread, spec

pytestmark = pytest.mark.fleet

VERSIONS = 4


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
