"""A pre-aggregating site gateway: two real Mosquittos bridged on loopback, the gateway
process on the site broker, the training engine fed by a real subscriber centrally."""

import threading
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest

from broker.fleet import DeviceEntry, Fleet, FleetSection, SiteEntry
from broker.generate import ORCHESTRATOR_USER, init_broker
from broker.launcher import start_dev_broker, start_site_broker
from broker.sites import site_user
from ftte import topics
from ftte.errors import RejectReason
from ftte.tasks import load_task
from ftte.wire import encode_update
from orchestrator.gateway import FlushPolicy
from orchestrator.gateway_service import GatewayService, load_gateway_config
from orchestrator.presets import make_server
from tests.fixtures.mosquitto import FLEET, FleetBroker
from tests.integration.fleet_helpers import wait_until
from tests.integration.test_site_gateway import connected

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
    files = init_broker(fleet, tmp_path / "broker")
    central = start_dev_broker(fleet, files.out_dir)
    site = start_site_broker(fleet, SITE, files.sites["north"], central.port)
    try:
        wait_until(
            lambda: f"as {site_user(SITE)}" in central.log_path.read_text(), 20, "the bridge"
        )
        yield FleetBroker(fleet, files, central), FleetBroker(fleet, files, site)
    finally:
        site.stop()
        central.stop()


def test_the_gateway_sends_its_sites_updates_up_as_one_and_the_engine_applies_it(brokers):
    central, site = brokers
    task = load_task("digits", num_devices=len(SITE_DEVICES), seed=0)
    server = make_server("ftte", task, strategy_params={"buffer_size": 3})
    for d in SITE_DEVICES:
        server.register(d, server.full_model_peak())
    server.set_site("north", SITE_DEVICES)
    assignments = server.dispatch(np.random.default_rng(0), 0.0)
    payloads = {
        a.device_id: encode_update(
            a.answer(
                {n: np.full(server.shapes[n], 0.01, np.float32) for n in a.trainable}, 10, 0.5, 0
            )
        )
        for a in assignments
    }
    config = load_gateway_config(central.files.sites["north"] / "gateway.toml")
    config = replace(
        config,
        broker=replace(config.broker, port=site.port),
        flush=FlushPolicy(max_updates=len(SITE_DEVICES), max_wait_s=60.0),
    )
    gateway = GatewayService(config)
    stop = threading.Event()
    thread = threading.Thread(target=gateway.run, args=(stop,), daemon=True)
    orchestrator = connected(central, ORCHESTRATOR_USER)
    devices = {d: connected(site, d) for d in SITE_DEVICES}
    try:
        thread.start()
        wait_until(gateway.link.subscribed.is_set, 20, "the gateway's subscription")
        assert orchestrator.subscribe(topics.all_combined_filter(FLEET)) == 1
        assert orchestrator.subscribe(topics.all_updates_filter(FLEET)) == 1
        hostile = devices["dev-01"]
        assert hostile.publish(topics.update_topic(FLEET, "dev-01"), b"\x28\xb5\x2f\xfd!") == 0
        for d, payload in payloads.items():
            assert devices[d].publish(topics.update_topic(FLEET, d), payload) == 0
        (message,) = orchestrator.wait_messages(1, timeout=20)
        # The devices' updates went to the site broker before the combined one: had the
        # bridge forwarded them, they would have come first on its one connection.
        assert message.topic == topics.combined_topic(FLEET, "north")
        assert gateway.combiner.rejected == {RejectReason.MALFORMED.value: 1}
        assert len(message.payload) < sum(len(p) for p in payloads.values())
        outcome = server.ingest_combined("north", message.payload)
        assert outcome.accepted and outcome.aggregation is not None
        assert server.version == 1 and server.accepted == len(SITE_DEVICES)
    finally:
        stop.set()
        thread.join(10)
        for client in (orchestrator, *devices.values()):
            client.close()
