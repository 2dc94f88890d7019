"""Faults mid-training: orchestrator SIGKILL, broker restart, time-series database outage.

These tests are about resuming, not about learning: each job stops on a version count
(``max_versions``) with a target no accuracy reaches, so the runs are short and end at a
version the test knows.
"""

import random
import re
import signal
import time
from collections import Counter
from dataclasses import replace

import pytest

from ftte.config import dump_section, write_toml
from ftte.wire import decode_update
from orchestrator.checkpoint import CHECKPOINT, DISPATCH, Journal, load_state
from orchestrator.localfleet import LocalFleet
from orchestrator.server import ServerSettings
from orchestrator.status import read_status
from orchestrator.telemetry import InfluxConfig
from tests.integration.fleet_helpers import (
    UNREACHABLE,
    ServiceThread,
    spec,
    start_orchestrator_process,
    wait_until,
)

pytestmark = pytest.mark.fleet

# Versions, not learning, are what these tests count: four agents and K = 2 make a version
# every two updates, so each run is short.
SMALL = {"devices": 4, "strategy_params": {"buffer_size": 2}}


def checkpoint_meta(run_dir):
    return load_state(run_dir)


def stop_with_unapplied_journal(process, run_dir, min_version, timeout):
    """SIGSTOP the orchestrator when its journal holds updates the checkpoint lacks.

    Stopped, it can neither journal nor checkpoint, so what is read is what a crash
    leaves. Returns the checkpoint's meta and the journal's entries.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run_dir / CHECKPOINT).exists() and checkpoint_meta(run_dir)["version"] >= min_version:
            process.send_signal(signal.SIGSTOP)
            meta = checkpoint_meta(run_dir)
            journal = Journal(run_dir)
            entries = [e for e in journal.entries() if e[0] != DISPATCH]  # updates only
            journal.close()
            if unapplied(entries, meta):
                return meta, entries
            process.send_signal(signal.SIGCONT)
        if process.poll() is not None:
            raise AssertionError(f"the orchestrator ended (exit {process.returncode}) first")
        time.sleep(0.05)
    raise TimeoutError(f"no unapplied journal entries past version {min_version} in {timeout} s")


def unapplied(entries, state):
    """Journal entries the checkpoint does not hold: answers to assignments open in it, or
    issued after it (assignment ids end in a counter the checkpoint records the next of)."""
    still_open = {d["open"]["id"] for d in state["devices"] if d["open"] is not None}

    def after_checkpoint(assignment_id):
        return int(assignment_id.rsplit(".", 1)[1]) >= state["next_assignment"]

    answered = [decode_update(payload).assignment_id for _, payload in entries]
    return [a for a in answered if a in still_open or after_checkpoint(a)]


def test_orchestrator_sigkill_replays_the_journal_and_resumes_from_checkpoint(tmp_path):
    fleet = LocalFleet(spec(tmp_path, target_accuracy=UNREACHABLE, max_versions=14, **SMALL))
    fleet.start_broker()
    # A checkpoint every 3 versions, never on the clock: a fast machine finishing the job
    # inside the default 5 s would leave only the final checkpoint, and no journal past it.
    config = fleet.job_config()
    config = replace(config, job=replace(config.job, checkpoint_every=3, checkpoint_every_s=3600))
    job_file = tmp_path / "job.toml"
    write_toml(job_file, dump_section(config), mode=0o600)
    run_dir = config.job.run_dir
    log = tmp_path / "orchestrator.log"
    first = start_orchestrator_process(job_file, log)
    second = None
    try:
        fleet.start_agents()
        meta, journaled = stop_with_unapplied_journal(first, run_dir, min_version=4, timeout=180)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        time.sleep(3)  # agents keep training and publishing while nobody listens
        second = start_orchestrator_process(job_file, log)
        assert second.wait(240) == 0
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
        fleet.stop()
    text = log.read_text()
    resumed = re.search(r"resumed from checkpoint at version (\d+) with (\d+)", text)
    assert resumed, "the second run did not load the checkpoint"
    assert (int(resumed.group(1)), int(resumed.group(2))) == (meta["version"], meta["accepted"])
    replayed = re.search(r"replayed (\d+) journaled updates: .* with (\d+) accepted", text)
    assert replayed, "the second run did not replay the journal"
    assert int(replayed.group(1)) == len(journaled)
    # Every update acknowledged before the crash counts once: none lost, none doubled.
    assert int(replayed.group(2)) == meta["accepted"] + len(unapplied(journaled, meta))
    final = checkpoint_meta(run_dir)
    assert final["version"] == 14
    assert final["accepted"] > int(replayed.group(2))


def test_broker_restart_mid_training_reconnects_everyone(tmp_path):
    fleet = LocalFleet(spec(tmp_path, target_accuracy=UNREACHABLE, max_versions=12, **SMALL))
    broker = fleet.start_broker()
    try:
        job = ServiceThread(fleet)
        fleet.start_agents()
        wait_until(lambda: job.service.server.version >= 4, 180, "version 4")
        restarted_at = job.service.server.version
        broker.restart()
        result = job.wait(timeout=300)
        codes = fleet.stop_agents()
    finally:
        fleet.stop()
    assert restarted_at < 12 and result.version == 12  # training went on after the restart
    assert job.service.link.connects >= 2
    assert set(codes.values()) == {0}


# Progress after a broker crash must come from the recovery, never from a timeout: the
# assignment timeout is far beyond the whole test, and each restart gets this long to
# produce two versions and an answer from every device (paho reconnects after 1 s).
RECOVERY_S = 30.0
FINISHED = re.compile(r"finished update (\w+) for assignment (\S+) of job")
ACKED = re.compile(r"update (\w+) (journaled|duplicate|refused)")


def agent_ledgers(fleet):
    """What the agents say: updates finished, acknowledged (by verdict), still held."""
    finished, acked = Counter(), Counter()
    for log in fleet.run_dir.glob("agent-*.log"):
        text = log.read_text()
        finished.update(m.group(1) for m in FINISHED.finditer(text))
        acked.update((m.group(1), m.group(2)) for m in ACKED.finditer(text))
    held = {p.stem for p in (fleet.run_dir / "agents").glob("*/outbox/*.upd")}
    return finished, acked, held


def accepted_ids(run_dir):
    """What the orchestrator says: update ids its telemetry recorded as accepted."""
    ids = Counter()
    for line in (run_dir / "telemetry.lp").read_text().splitlines():
        if line.startswith("ftte_update,") and "reason=accepted" in line:
            ids[re.search(r'update_id="(\w+)"', line).group(1)] += 1
    return ids


def test_broker_sigkill_at_five_random_moments_loses_no_acknowledged_update(tmp_path):
    fleet = LocalFleet(
        spec(
            tmp_path,
            target_accuracy=UNREACHABLE,
            max_versions=10_000,
            slow_fraction=0.0,
            server=ServerSettings(assignment_timeout_s=3600),
            **SMALL,
        )
    )
    broker = fleet.start_broker()
    moments = random.Random(13)
    progress = []
    try:
        job = ServiceThread(fleet)
        server = job.service.server
        fleet.start_agents()
        wait_until(lambda: server.version >= 2, 120, "training under way")
        for _ in range(5):
            time.sleep(moments.uniform(0.0, 2.0))  # anywhere in a version's life
            version = server.version
            answered = {d: record.last_closed for d, record in server.devices.items()}
            broker.kill()
            killed = time.monotonic()
            broker.start()
            # Every device answers again (a device whose assignment or update the crash
            # lost would wait for the timeout), and versions go on.
            wait_until(
                lambda v=version, a=answered: (
                    server.version >= v + 2
                    and all(server.devices[d].last_closed != last for d, last in a.items())
                ),
                RECOVERY_S,
                "two versions and an answer from every device",
            )
            progress.append(time.monotonic() - killed)
        job.stop.set()
        result = job.wait(timeout=60)
        codes = fleet.stop_agents()
    finally:
        fleet.stop()
    assert len(progress) == 5 and set(codes.values()) == {0}
    finished, acked, held = agent_ledgers(fleet)
    accepted = accepted_ids(job.service.run_dir)
    # Each finished update was journaled exactly once, or its agent still holds it (it
    # finished as the job stopped); nothing the orchestrator accepted came from nowhere.
    assert set(accepted.values()) == {1} and max(finished.values()) == 1
    assert set(finished) == set(accepted) | held and set(accepted) <= set(finished)
    assert len(held - set(accepted)) <= SMALL["devices"]
    assert {u for u, verdict in acked if verdict == "journaled"} <= set(accepted)
    assert load_state(job.service.run_dir)["accepted"] == len(accepted) == server.accepted
    assert result.version == server.version >= 12
    # Resends were recognised (never refused as replays or as answers to nothing).
    assert set(server.rejected) <= {"duplicate"}
    assert not [u for u, verdict in acked if verdict == "refused"]


def test_influx_outage_slows_nothing_and_every_point_is_counted(tmp_path, victoria):
    # No retries: a refused batch is counted as failed at once, so the writer has no
    # backlog when the job closes it and every emitted point is accounted for.
    influx = InfluxConfig(
        url=victoria.url,
        token="t",
        org="ftte",
        bucket="ftte",
        flush_interval_ms=200,
        max_retries=0,
        close_wait_ms=10_000,
    )
    fleet = LocalFleet(
        spec(tmp_path, target_accuracy=UNREACHABLE, max_versions=16, influx=influx, **SMALL)
    )
    fleet.start_broker()
    try:
        job = ServiceThread(fleet)
        fleet.start_agents()
        wait_until(
            lambda: (
                job.service.server.version >= 6 and job.service.telemetry.counters().written > 0
            ),
            180,
            "version 6 with points written",
        )
        before = job.service.history[-1]
        victoria.stop()
        result = job.wait(timeout=300)
    finally:
        fleet.stop()
    assert result.version == 16
    history = job.service.history
    pace_before = before[1] / before[0]
    pace_after = (history[-1][1] - before[1]) / (history[-1][0] - before[0])
    assert pace_after >= 0.5 * pace_before
    counters = job.service.telemetry.counters()
    assert counters.failed > 0
    assert counters.written + counters.failed == counters.emitted


def test_status_reads_the_retained_job_state(tmp_path):
    fleet = LocalFleet(spec(tmp_path, devices=2, max_versions=3))
    fleet.start_broker()
    try:
        job = ServiceThread(fleet)
        fleet.start_agents()
        job.wait(timeout=120)
        state = read_status(fleet.operator_account(), fleet.fleet.fleet.name, timeout_s=5)
    finally:
        fleet.stop()
    assert state["state"] == "done" and state["version"] == 3
    assert state["accepted"] == job.service.server.accepted
    # Every accepted update was journaled and its device told so, once.
    assert state["delivery"]["ack_journaled"] == state["accepted"]
