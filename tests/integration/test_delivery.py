"""The orchestrator's side of delivery over a real Mosquitto: it acknowledges what it
journaled (and a resend as a duplicate), sends again an assignment a device's live birth
does not hold, and re-subscribes after a broker crash that lost its session.

The devices here are protocol-level clients with a device's generated credentials, so each
test runs in seconds without torch.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ftte import topics
from ftte.wire import decode_assignment, encode_update
from ftte.wire.control import DeviceStatus, UpdateAck, Verdict, decode_ack
from ftte.wire.messages import Assignment
from orchestrator.localfleet import LocalFleet
from orchestrator.server import ServerSettings
from orchestrator.service import MAX_RECOVERIES
from tests.fixtures.mosquitto import Client
from tests.integration.fleet_helpers import ServiceThread, spec, wait_until
from tests.integration.test_bad_updates import FakeBroker

# Long enough that nothing in these tests can be the work of an assignment timeout.
NO_TIMEOUT = ServerSettings(assignment_timeout_s=3600)


@contextmanager
def running_job(tmp_path: Path, **strategy: Any) -> Iterator[tuple[LocalFleet, ServiceThread]]:
    """A one-device fleet's broker and orchestrator, stopped however the test ends."""
    fleet = LocalFleet(spec(tmp_path, devices=1, server=NO_TIMEOUT, strategy_params=strategy))
    fleet.start_broker()
    job = ServiceThread(fleet)
    try:
        yield fleet, job
    finally:
        job.stop.set()
        job.thread.join(30)
        fleet.broker.stop()


@contextmanager
def connected(fleet: LocalFleet, job: ServiceThread) -> Iterator["Device"]:
    """Device dev-0, connected, closed however the test ends."""
    device = Device(fleet, "dev-0", job)
    try:
        yield device
    finally:
        device.client.close()


class Device:
    """A device speaking the protocol: birth, assignments in, updates out, acks in."""

    def __init__(self, fleet: LocalFleet, device_id: str, job: ServiceThread) -> None:
        # Births are then live messages to the orchestrator, not retained ones.
        wait_until(job.service.link.subscribed.is_set, 20, "the orchestrator's subscriptions")
        self.fleet, self.id = fleet.fleet.fleet.name, device_id
        self.client = Client(FakeBroker(fleet), device_id)
        assert self.client.connect()
        assert self.client.subscribe(topics.assign_topic(self.fleet, device_id)) == 1
        assert self.client.subscribe(topics.ack_topic(self.fleet, device_id)) == 1

    def birth(
        self, held: tuple[str, ...] = (), model_version: int = -1, budget: int = 10**9
    ) -> None:
        status = DeviceStatus(self.id, budget, "test", "0", model_version, held)
        topic = topics.status_topic(self.fleet, self.id)
        assert self.client.publish(topic, status.encode(), retain=True) == 0

    def received(self, kind: str, count: int, timeout: float = 20.0) -> list[bytes]:
        """The first ``count`` messages on this device's ``kind`` topic."""
        topic = topics.device_topic(self.fleet, self.id, kind)  # type: ignore[arg-type]

        def of_kind():
            return [m.payload for m in self.client.messages if m.topic == topic]

        wait_until(lambda: len(of_kind()) >= count, timeout, f"{count} {kind} messages")
        return of_kind()[:count]

    def answer(self, assignment: Assignment, update_id: str) -> bytes:
        delta = {
            n: np.full(assignment.tensors[n].shape, 0.01, np.float32) for n in assignment.trainable
        }
        payload = encode_update(assignment.answer(delta, 10, 0.5, 1000, update_id=update_id))
        self.send(payload)
        return payload

    def send(self, payload: bytes) -> None:
        assert self.client.publish(topics.update_topic(self.fleet, self.id), payload) == 0


def test_a_journaled_update_is_acknowledged_and_its_resend_is_acknowledged_as_a_duplicate(
    tmp_path,
):
    with running_job(tmp_path) as (fleet, job), connected(fleet, job) as device:
        device.birth()
        (first,) = device.received("assign", 1)
        payload = device.answer(decode_assignment(first), "u-1")
        acks = device.received("ack", 1)
        assert decode_ack(acks[0]) == UpdateAck("u-1", Verdict.JOURNALED)
        device.send(payload)  # as after a broker crash that lost the acknowledgement
        acks = device.received("ack", 2)
        assert decode_ack(acks[1]) == UpdateAck("u-1", Verdict.DUPLICATE)
        server = job.service.server
        assert server.accepted == 1 and dict(server.rejected) == {"duplicate": 1}
        assert job.service.delivery["ack_journaled"] == 1
        assert job.service.delivery["ack_duplicate"] == 1
        assert not job.service.quarantine.files()


def test_a_refused_update_is_acknowledged_with_its_reason_so_the_agent_stops_sending_it(
    tmp_path,
):
    with running_job(tmp_path) as (fleet, job), connected(fleet, job) as device:
        device.birth()
        assignment = decode_assignment(device.received("assign", 1)[0])
        stray = Assignment(**{**assignment.__dict__, "assignment_id": "dev-0.999"})
        device.answer(stray, "u-stray")
        (ack,) = device.received("ack", 1)
        assert decode_ack(ack) == UpdateAck("u-stray", Verdict.REFUSED, "unexpected")


def test_an_assignment_a_live_birth_does_not_hold_is_sent_again_unchanged(tmp_path):
    with running_job(tmp_path) as (fleet, job), connected(fleet, job) as device:
        device.birth()
        (sent,) = device.received("assign", 1)
        assignment = decode_assignment(sent)
        device.birth(held=(assignment.assignment_id,))  # holds it: nothing is sent
        device.birth(held=())  # reconnected without it: it was lost on the way
        assignments = device.received("assign", 2)
        assert assignments[1] == sent  # the same assignment, byte for byte
        assert len([m for m in device.client.messages if m.topic.endswith("/assign")]) == 2
        device.answer(assignment, "u-1")
        assert decode_ack(device.received("ack", 1)[0]).verdict is Verdict.JOURNALED
        assert job.service.delivery["assignments_resent"] == 1


def test_a_device_that_lost_its_model_gets_a_fresh_complete_assignment(tmp_path):
    with running_job(tmp_path, buffer_size=1) as (fleet, job), connected(fleet, job) as device:
        # A fifth of full training: a slice, so the next assignment carries only it.
        budget = job.service.server.full_model_peak() // 5
        device.birth(budget=budget)
        first = decode_assignment(device.received("assign", 1)[0])
        device.answer(first, "u-1")  # K = 1: version 1
        second = decode_assignment(device.received("assign", 2)[1])
        assert second.version == 1 and len(second.tensors) < len(first.tensors)
        device.birth(held=(), model_version=-1, budget=budget)  # restarted from scratch
        third = decode_assignment(device.received("assign", 3)[2])
        assert third.assignment_id != second.assignment_id
        assert set(third.tensors) == set(first.tensors)  # every tensor again
        assert job.service.delivery["assignments_withdrawn"] == 1
        device.answer(third, "u-3")
        assert decode_ack(device.received("ack", 2)[1]).verdict is Verdict.JOURNALED


def test_after_a_broker_sigkill_that_lost_its_session_the_orchestrator_subscribes_again(
    tmp_path,
):
    with running_job(tmp_path) as (fleet, job):
        link = job.service.link
        wait_until(link.subscribed.is_set, 20, "the orchestrator's subscriptions")
        fleet.broker.kill()  # before any autosave: its session and subscriptions are gone
        fleet.broker.start()
        wait_until(lambda: link.connects >= 2 and link.subscribed.is_set(), 30, "a resubscribe")
        assert not link.session_present
        with connected(fleet, job) as device:
            device.birth()
            device.answer(decode_assignment(device.received("assign", 1)[0]), "u-1")
            assert decode_ack(device.received("ack", 1)[0]).verdict is Verdict.JOURNALED


def test_a_device_flooding_births_gets_its_assignment_again_a_bounded_number_of_times(tmp_path):
    with running_job(tmp_path) as (fleet, job), connected(fleet, job) as device:
        device.birth()
        (sent,) = device.received("assign", 1)
        for _ in range(MAX_RECOVERIES + 3):
            device.birth(held=())
        device.answer(decode_assignment(sent), "u-1")
        # The ack was published after every resend the births caused: they arrived first.
        assert decode_ack(device.received("ack", 1)[0]).verdict is Verdict.JOURNALED
        assigned = [m for m in device.client.messages if m.topic.endswith("/assign")]
        # The first, its resends, and the next assignment once the answer freed the device.
        resends = [m for m in assigned if m.payload == sent][1:]
        assert len(resends) == MAX_RECOVERIES
        assert job.service.delivery["recoveries_capped"] == 3
