"""A site gateway: the site's devices on their own Mosquitto, bridged to the central one.

Two real Mosquitto instances with the files `ftte broker init` writes, bridged on loopback;
the orchestrator serves a site device exactly as a central one, and the bridge can speak
for its own site's devices only.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from broker.fleet import DeviceEntry, Fleet, FleetSection, SiteEntry
from broker.generate import ORCHESTRATOR_USER, init_broker
from broker.launcher import start_dev_broker, start_site_broker
from broker.sites import site_user
from ftte import topics
from ftte.config import read_toml
from ftte.wire import decode_assignment, encode_update
from ftte.wire.control import DeviceStatus, Verdict, decode_ack
from tests.fixtures.mosquitto import FLEET, Client, FleetBroker
from tests.integration.fleet_helpers import ServiceThread, wait_until

SITE = SiteEntry("north", host="127.0.0.1")
NOT_AUTHORIZED = 0x87


@pytest.fixture
def brokers(tmp_path) -> Iterator[tuple[FleetBroker, FleetBroker]]:
    """(central, site): each with every account's credentials, the bridge connected."""
    fleet = Fleet(
        FleetSection(name=FLEET, broker_host="127.0.0.1"),
        [
            DeviceEntry("dev-00", 10**7),
            DeviceEntry("dev-01", 10**7, site="north"),
            DeviceEntry("dev-02", 10**7, site="north"),
        ],
        [SITE],
    )
    with bridged(fleet, SITE, tmp_path / "broker") as pair:
        yield pair


@contextmanager
def bridged(
    fleet: Fleet, site_entry: SiteEntry, out: Path
) -> Iterator[tuple[FleetBroker, FleetBroker]]:
    """(central, site) Mosquittos from ``ftte broker init``'s files, the bridge connected."""
    files = init_broker(fleet, out)
    central = start_dev_broker(fleet, files.out_dir)
    site = start_site_broker(fleet, site_entry, files.sites[site_entry.name], central.port)
    try:
        wait_until(
            lambda: f"as {site_user(site_entry)}" in central.log_path.read_text(),
            20,
            "the bridge",
        )
        yield FleetBroker(fleet, files, central), FleetBroker(fleet, files, site)
    finally:
        site.stop()
        central.stop()


def connected(broker: FleetBroker, user: str, password: str | None = None) -> Client:
    client = Client(broker, user, password)
    assert client.connect()
    return client


def test_the_orchestrator_serves_a_site_device_through_the_bridge(brokers, tmp_path):
    central, site = brokers
    job = ServiceThread(central.job_config(tmp_path / "run"))
    device = connected(site, "dev-01")
    try:
        wait_until(job.service.link.subscribed.is_set, 20, "the orchestrator's subscriptions")
        assert device.subscribe(topics.assign_topic(FLEET, "dev-01")) == 1
        assert device.subscribe(topics.ack_topic(FLEET, "dev-01")) == 1
        birth = DeviceStatus("dev-01", 10**7, "pi", "1", -1, ())
        device.publish(topics.status_topic(FLEET, "dev-01"), birth.encode(), retain=True)
        device.wait_messages(1, timeout=20)
        assignment = decode_assignment(device.messages[0].payload)
        delta = {n: np.zeros(assignment.tensors[n].shape, np.float32) for n in assignment.trainable}
        update = assignment.answer(delta, 10, 0.5, 1000, update_id="u-1")
        device.publish(topics.update_topic(FLEET, "dev-01"), encode_update(update))
        wait_until(lambda: len(device.messages) >= 2, 20, "the acknowledgement")
        assert decode_ack(device.messages[1].payload).verdict is Verdict.JOURNALED
        assert job.service.server.accepted == 1
    finally:
        device.close()
        job.stop.set()
        job.thread.join(30)


def test_the_bridge_account_speaks_for_its_own_sites_devices_only(brokers):
    central, site = brokers
    password = str(read_toml(central.files.sites["north"] / "bridge.toml")["broker"]["password"])
    bridge = connected(central, site_user(SITE), password)  # as a stolen gateway would
    try:
        assert bridge.publish(topics.update_topic(FLEET, "dev-01"), b"x") in (0x00, 0x10)
        assert bridge.publish(topics.update_topic(FLEET, "dev-00"), b"x") == NOT_AUTHORIZED
        assert bridge.publish(topics.assign_topic(FLEET, "dev-01"), b"x") == NOT_AUTHORIZED
    finally:
        bridge.close()
    # A site's device exists only at its site; at the site, only as itself.
    assert not Client(central, "dev-01").connect(timeout=2)
    device = connected(site, "dev-01")
    try:
        assert device.publish(topics.update_topic(FLEET, "dev-02"), b"x") == NOT_AUTHORIZED
    finally:
        device.close()


def test_the_central_broker_gives_the_orchestrator_what_a_site_device_publishes(brokers):
    central, site = brokers
    orchestrator = connected(central, ORCHESTRATOR_USER)
    device = connected(site, "dev-02")
    try:
        assert orchestrator.subscribe(topics.all_updates_filter(FLEET)) == 1
        assert device.publish(topics.update_topic(FLEET, "dev-02"), b"payload") in (0x00, 0x10)
        (message,) = orchestrator.wait_messages(1, timeout=20)
        assert (message.topic, message.payload) == (
            topics.update_topic(FLEET, "dev-02"),
            b"payload",
        )
    finally:
        device.close()
        orchestrator.close()
