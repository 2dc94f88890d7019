"""Two jobs back to back on the same running agents: the second trains its own model."""

import re
from dataclasses import replace

import pytest

from orchestrator.localfleet import LocalFleet
from tests.integration.fleet_helpers import UNREACHABLE, ServiceThread, spec

pytestmark = pytest.mark.fleet

DEVICES = 2


def test_a_second_job_on_running_agents_sends_its_whole_model_first(tmp_path):
    fleet = LocalFleet(
        spec(tmp_path, devices=DEVICES, slow_fraction=0.0, target_accuracy=UNREACHABLE)
    )
    broker = fleet.start_broker()
    first = replace(fleet.job_config(), job=replace(fleet.job_config().job, max_versions=2))
    try:
        job_1 = ServiceThread(first)
        fleet.start_agents()
        assert job_1.wait(timeout=120).version == 2
        # The gateway restarts between the jobs: each agent reconnects and announces the
        # version of job-1's model it holds, retained on its status topic.
        broker.restart()
        second = replace(
            first,
            job=replace(
                first.job, name="job-2", seed=1, run_dir=tmp_path / "job-2", max_versions=1
            ),
        )
        job_2 = ServiceThread(second)
        assert job_2.wait(timeout=120).version == 1
        model_tensors = len(job_2.service.server.params)
    finally:
        fleet.stop()
    first_received = {}
    for device in fleet.files.device_configs:
        log = (fleet.run_dir / f"agent-{device}.log").read_text()
        received = re.findall(r"of job job-2: (\d+) tensors received", log)
        if received:
            first_received[device] = int(received[0])
    # job-2's first assignment to each device that answered it carried the whole model.
    assert first_received and set(first_received.values()) == {model_tensors}, first_received
