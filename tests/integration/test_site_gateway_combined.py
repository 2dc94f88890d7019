"""A pre-aggregating site gateway: two real Mosquittos bridged on loopback, the gateway
process on the site broker, the orchestrator service on the central one."""

import threading
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest

from broker.fleet import DeviceEntry, Fleet, FleetSection, SiteEntry
from ftte import topics
from ftte.errors import RejectReason
from ftte.wire import decode_assignment, encode_update
from ftte.wire.control import DeviceStatus, Verdict, decode_ack
from orchestrator.gateway import FlushPolicy
from orchestrator.gateway_service import GatewayService, load_gateway_config
from tests.fixtures.mosquitto import FLEET, FleetBroker
from tests.integration.fleet_helpers import ServiceThread, wait_until
from tests.integration.test_site_gateway import bridged, connected

SITE = SiteEntry("north", host="127.0.0.1", pre_aggregate=True)
SITE_DEVICES = ["dev-01", "dev-02", "dev-03"]


@pytest.fixture
def brokers(tmp_path) -> Iterator[tuple[FleetBroker, FleetBroker]]:
    """(central, site) of a fleet whose site pre-aggregates, the bridge connected."""
    fleet = Fleet(
        FleetSection(name=FLEET, broker_host="127.0.0.1", task="digits"),
        [DeviceEntry(d, 10**7, site="north") for d in SITE_DEVICES],
        [SITE],
    )
    with bridged(fleet, SITE, tmp_path / "broker") as pair:
        yield pair


def gateway_for(central: FleetBroker, site: FleetBroker) -> GatewayService:
    """The site's gateway process from its generated config, flushing at 3 updates."""
    config = load_gateway_config(central.files.sites["north"] / "gateway.toml")
    return GatewayService(
        replace(
            config,
            broker=replace(config.broker, port=site.port),
            flush=FlushPolicy(max_updates=len(SITE_DEVICES), max_wait_s=60.0),
        )
    )


def test_the_orchestrator_applies_a_sites_updates_as_one_combined_update(brokers, tmp_path):
    central, site = brokers
    job = central.job_config(tmp_path / "run")
    job = replace(job, strategy={"buffer_size": 3}, sites={"north": SITE_DEVICES})
    service = ServiceThread(job)
    gateway = gateway_for(central, site)
    stop = threading.Event()
    thread = threading.Thread(target=gateway.run, args=(stop,), daemon=True)
    devices = {d: connected(site, d) for d in SITE_DEVICES}
    sent = {}
    try:
        thread.start()
        wait_until(gateway.link.subscribed.is_set, 20, "the gateway's subscription")
        wait_until(service.service.link.subscribed.is_set, 20, "the orchestrator's")
        for d, device in devices.items():
            assert device.subscribe(topics.assign_topic(FLEET, d)) == 1
            assert device.subscribe(topics.ack_topic(FLEET, d)) == 1
            birth = DeviceStatus(d, 10**7, "pi", "1", -1, ())
            device.publish(topics.status_topic(FLEET, d), birth.encode(), retain=True)
        # A hostile payload on a device's own topic: refused at the gateway, counted.
        assert devices["dev-01"].publish(topics.update_topic(FLEET, "dev-01"), b"junk") == 0
        for d, device in devices.items():
            (message,) = device.wait_messages(1, timeout=20)
            a = decode_assignment(message.payload)
            delta = {n: np.full(a.tensors[n].shape, 0.01, np.float32) for n in a.trainable}
            sent[d] = encode_update(a.answer(delta, 10, 0.5, 1000))
            assert device.publish(topics.update_topic(FLEET, d), sent[d]) == 0
        for d, device in devices.items():
            wait_until(lambda device=device: len(device.messages) >= 2, 20, f"{d}'s ack")
            assert decode_ack(device.messages[1].payload).verdict is Verdict.JOURNALED
        server = service.service.server
        # Had the bridge carried the devices' own updates too, the combined one would have
        # been refused as answering assignments already answered.
        assert (server.accepted, server.version, dict(server.rejected)) == (3, 1, {})
        assert gateway.combiner.rejected == {RejectReason.MALFORMED.value: 1}
        assert gateway.combiner.alone == 0  # it saw every assignment go down: it vouched
        (combined_bytes,) = gateway.sent_bytes  # what crossed the bridge upward
        assert combined_bytes < sum(len(p) for p in sent.values())
    finally:
        stop.set()
        thread.join(10)
        for device in devices.values():
            device.close()
        service.stop.set()
        service.thread.join(30)
