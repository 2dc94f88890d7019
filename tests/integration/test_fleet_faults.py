"""Faults mid-training: orchestrator SIGKILL, broker restart, time-series database outage."""

import re
import signal
import time

import numpy as np

from orchestrator.checkpoint import CHECKPOINT, Journal
from orchestrator.localfleet import LocalFleet
from orchestrator.status import read_status
from orchestrator.telemetry import InfluxConfig
from tests.integration.fleet_helpers import (
    ServiceThread,
    spec,
    start_orchestrator_process,
    wait_until,
)

TARGET = 0.85  # a little below the task's own, to keep these runs short


def checkpoint_meta(run_dir):
    import json

    with np.load(run_dir / CHECKPOINT) as f:
        return json.loads(f["meta"].tobytes())


def test_orchestrator_sigkill_resumes_from_checkpoint_and_journal(tmp_path):
    fleet = LocalFleet(spec(tmp_path, target_accuracy=TARGET))
    fleet.start_broker()
    job_file = fleet.write_job_file()
    job = fleet.job_config()
    log = tmp_path / "orchestrator.log"
    first = start_orchestrator_process(job_file, log)
    try:
        fleet.start_agents()
        wait_until(
            lambda: (
                (job.job.run_dir / CHECKPOINT).exists()
                and checkpoint_meta(job.job.run_dir)["version"] >= 15
            ),
            180,
            "version 15",
        )
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        meta = checkpoint_meta(job.job.run_dir)
        journaled = sum(1 for _ in Journal(job.job.run_dir).entries())
        time.sleep(3)  # agents keep training and publishing while nobody listens
        second = start_orchestrator_process(job_file, log)
        assert second.wait(240) == 0
    finally:
        first.kill()
        fleet.stop()
    text = log.read_text()
    resumed = re.search(r"resumed from checkpoint at version (\d+) with (\d+)", text)
    assert resumed and int(resumed.group(1)) == meta["version"]
    assert int(resumed.group(2)) == meta["accepted"]
    if journaled:
        replayed = re.search(r"replayed (\d+) journaled updates", text)
        assert replayed and int(replayed.group(1)) == journaled
    final = checkpoint_meta(job.job.run_dir)
    assert final["accepted"] > meta["accepted"] + journaled
    assert "target reached" in text


def test_broker_restart_mid_training_reconnects_everyone(tmp_path):
    fleet = LocalFleet(spec(tmp_path, target_accuracy=TARGET))
    broker = fleet.start_broker()
    try:
        job = ServiceThread(fleet)
        fleet.start_agents()
        wait_until(lambda: job.service.server.version >= 10, 180, "version 10")
        broker.restart()
        result = job.wait(timeout=300)
        codes = fleet.stop_agents()
    finally:
        fleet.stop()
    assert result.reached_target
    assert job.service.link.connects >= 2
    assert set(codes.values()) == {0}


def test_influx_outage_slows_nothing_and_is_counted(tmp_path, victoria):
    influx = InfluxConfig(
        url=victoria.url,
        token="t",
        org="ftte",
        bucket="ftte",
        flush_interval_ms=200,
        close_wait_ms=2000,
    )
    fleet = LocalFleet(spec(tmp_path, target_accuracy=TARGET, influx=influx))
    fleet.start_broker()
    try:
        job = ServiceThread(fleet)
        fleet.start_agents()
        wait_until(lambda: job.service.server.version >= 10, 180, "version 10")
        before = job.service.history[-1]
        victoria.stop()
        result = job.wait(timeout=300)
    finally:
        fleet.stop()
    assert result.reached_target
    history = job.service.history
    pace_before = before[1] / before[0]
    pace_after = (history[-1][1] - before[1]) / (history[-1][0] - before[0])
    assert pace_after >= 0.5 * pace_before
    counters = job.service.telemetry.counters()
    assert counters.failed > 0
    assert counters.written + counters.failed <= counters.emitted


def test_status_reads_the_retained_job_state(tmp_path):
    fleet = LocalFleet(spec(tmp_path, devices=2, max_versions=3))
    fleet.start_broker()
    try:
        job = ServiceThread(fleet)
        fleet.start_agents()
        job.wait(timeout=120)
        state = read_status(fleet.job_config(), timeout_s=5)
    finally:
        fleet.stop()
    assert state["state"] == "done" and state["version"] == 3
    assert state["accepted"] == job.service.server.accepted
