"""A client can only be itself: the broker makes the username the client id (issue 13).

The probes of the issue: a device's credentials claiming another device's client id or the
orchestrator's, clean-starting or resuming that session. Before, the holder was kicked off
(its last will published) and the messages queued for it were lost.
"""

from dataclasses import dataclass

import pytest

from broker.generate import OPERATOR_USER, ORCHESTRATOR_USER
from ftte import topics
from ftte.wire.control import DeviceStatus
from orchestrator.status import read_status
from tests.fixtures.mosquitto import FLEET, Client
from tests.integration.fleet_helpers import ServiceThread, wait_until

PROBE = "dev-01"  # whose credentials the probes use
SESSION_S = 600
QUEUED = [f"queued-{i}".encode() for i in range(5)]
ACCEPTED = (0x00, 0x10)  # success, or "no matching subscribers" (retained all the same)


@dataclass(frozen=True)
class Holder:
    """A client id's rightful holder, a filter it reads, and who publishes there."""

    user: str
    client_id: str
    reads: str
    publisher: str
    topic: str


HOLDERS = [
    Holder(
        "dev-00",
        "dev-00",
        topics.assign_topic(FLEET, "dev-00"),
        ORCHESTRATOR_USER,
        topics.assign_topic(FLEET, "dev-00"),
    ),
    Holder(
        ORCHESTRATOR_USER,
        ORCHESTRATOR_USER,
        topics.all_updates_filter(FLEET),
        "dev-02",
        topics.update_topic(FLEET, "dev-02"),
    ),
    # The orchestrator's client id before issue 13 (one per job, not bound to the account).
    Holder(
        ORCHESTRATOR_USER,
        "ftte-orchestrator-job",
        topics.all_updates_filter(FLEET),
        "dev-02",
        topics.update_topic(FLEET, "dev-02"),
    ),
]
IDS = ["device", "orchestrator", "orchestrator-old-id"]


@pytest.fixture
def clients(fleet_broker):
    made = []

    def make(user, client_id=None):
        c = Client(fleet_broker, user, client_id=client_id)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.mark.parametrize("holder", HOLDERS, ids=IDS)
def test_claiming_another_clients_id_does_not_disconnect_it(clients, holder):
    connected = clients(holder.user, holder.client_id)
    assert connected.connect()
    assert connected.subscribe(holder.reads) == 1
    probe = clients(PROBE, holder.client_id)
    assert probe.connect()  # accepted, but as dev-01 whatever id it asked for
    publisher = clients(holder.publisher)
    assert publisher.connect()
    assert publisher.publish(holder.topic, b"sentinel") == 0
    # A kicked holder would reconnect clean (no session, no subscription) and miss this.
    assert [m.payload for m in connected.wait_messages(1)] == [b"sentinel"]
    assert connected.disconnects == []


@pytest.mark.parametrize("clean_start", [True, False], ids=["clean-start", "resume"])
@pytest.mark.parametrize("holder", HOLDERS, ids=IDS)
def test_claiming_another_clients_id_leaves_what_is_queued_for_it(clients, holder, clean_start):
    away = clients(holder.user, holder.client_id)
    assert away.connect(session_expiry_s=SESSION_S)
    assert away.subscribe(holder.reads) == 1
    away.close()  # its session lives on: the broker queues for it
    publisher = clients(holder.publisher)
    assert publisher.connect()
    assert all(publisher.publish(holder.topic, payload) == 0 for payload in QUEUED)
    probe = clients(PROBE, holder.client_id)
    assert probe.connect(clean_start=clean_start, session_expiry_s=SESSION_S)
    probe.close()
    back = clients(holder.user, holder.client_id)
    assert back.connect(clean_start=False, session_expiry_s=SESSION_S)
    assert [m.payload for m in back.wait_messages(len(QUEUED))] == QUEUED


def test_the_same_account_twice_takes_the_session(clients):
    """What still holds: whoever has a device's password can be that device."""
    device = clients("dev-00")
    assert device.connect()
    assert clients("dev-00", client_id="anything").connect()
    wait_until(lambda: bool(device.disconnects), 5, "the session taken over")


def test_ftte_status_while_the_orchestrator_runs_leaves_its_connection(fleet_broker, tmp_path):
    job = ServiceThread(fleet_broker.job_config(tmp_path / "run"))
    link = job.service.link
    device = Client(fleet_broker, "dev-03")
    try:
        state = read_status(fleet_broker.settings(OPERATOR_USER), FLEET, timeout_s=10)
        assert state["liveness"] == "running"
        # Sent after the status read: a taken-over orchestrator would get it only after
        # reconnecting, so its connection count would show it.
        assert device.connect()
        birth = DeviceStatus("dev-03", 10**9, "test", "0", -1).encode()
        assert device.publish(topics.status_topic(FLEET, "dev-03"), birth) == 0
        wait_until(lambda: "dev-03" in job.service.server.devices, 10, "dev-03's birth")
        assert link.connects == 1
    finally:
        device.close()
        job.stop.set()
        job.thread.join(30)


def test_a_fresh_job_does_not_get_what_an_earlier_job_left_queued(fleet_broker, tmp_path):
    """One account, so one session per fleet: a new job must not inherit the old queue."""
    earlier = Client(fleet_broker, ORCHESTRATOR_USER)
    assert earlier.connect(session_expiry_s=SESSION_S)
    assert earlier.subscribe(topics.all_updates_filter(FLEET)) == 1
    earlier.close()
    device = Client(fleet_broker, "dev-03")
    assert device.connect()
    update = topics.update_topic(FLEET, "dev-03")
    assert device.publish(update, b"an answer to the earlier job's assignment") == 0
    birth = DeviceStatus("dev-03", 10**9, "test", "0", -1).encode()
    assert device.publish(topics.status_topic(FLEET, "dev-03"), birth, retain=True) in ACCEPTED
    job = ServiceThread(fleet_broker.job_config(tmp_path / "run", name="later"))
    try:
        # A resumed session delivers its queue right after CONNACK, before the retained
        # birth that follows the SUBACK: once dev-03 is registered, the queue is handled.
        wait_until(lambda: "dev-03" in job.service.server.devices, 10, "dev-03's birth")
        assert not job.service.server.rejected
        assert job.service.quarantine.files() == []
    finally:
        device.close()
        job.stop.set()
        job.thread.join(30)
