"""`ftte status` tells a running orchestrator from a dead or hung one within seconds."""

import signal
import time

import pytest

from ftte.wire.control import JobState
from orchestrator.localfleet import LocalFleet
from orchestrator.status import STALE_AFTER_S, liveness, read_status
from tests.integration.fleet_helpers import spec, start_orchestrator_process, wait_until


def state(name: str, heartbeat: float) -> JobState:
    return JobState("j", name, 3, {"accuracy": 0.5}, 0, 2, 10, {}, heartbeat)


def test_a_running_state_with_an_old_heartbeat_is_unresponsive():
    assert liveness(state("running", 100.0), 100.0 + STALE_AFTER_S) == "running"
    assert liveness(state("running", 100.0), 100.1 + STALE_AFTER_S) == "unresponsive"
    assert liveness(state("done", 100.0), 10_000.0) == "done"


def seen(fleet: LocalFleet, within_s: float) -> str | None:
    """What ``ftte status`` reports, or None while no job state is retained yet."""
    try:
        return read_status(fleet.operator_account(), fleet.fleet.fleet.name, within_s)["liveness"]
    except TimeoutError:
        return None


@pytest.mark.fleet
def test_status_reports_a_killed_orchestrator_as_gone_within_ten_seconds(tmp_path):
    fleet = LocalFleet(spec(tmp_path, devices=2))
    fleet.start_broker()
    process = start_orchestrator_process(fleet.write_job_file(), tmp_path / "orch.log")
    try:
        wait_until(lambda: seen(fleet, 5.0) == "running", 90, "running")
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        killed = time.monotonic()
        wait_until(lambda: seen(fleet, 2.0) == "gone", 10, "gone")
        assert time.monotonic() - killed <= 10.0
    finally:
        process.kill()
        fleet.broker.stop()
