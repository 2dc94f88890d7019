"""`ftte broker run`: the generated broker files served by Mosquitto on this machine, as is."""

import subprocess
import sys
from pathlib import Path

from broker.generate import init_broker
from broker.launcher import RunningBroker, free_port
from ftte import topics
from ftte.config import dump_section, write_toml
from tests.fixtures.mosquitto import FLEET, Client, FleetBroker, make_fleet
from tests.integration.fleet_helpers import wait_until

FTTE = Path(sys.executable).parent / "ftte"


def test_broker_run_serves_the_generated_files_with_tls_passwords_and_acls(tmp_path):
    fleet = make_fleet()
    out = tmp_path / "broker-files"
    files = init_broker(fleet, out)
    inventory = tmp_path / "fleet.toml"
    write_toml(inventory, dump_section(fleet))
    port = free_port()
    command = [FTTE, "broker", "run", "--fleet", inventory, "--out", out, "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    broker = FleetBroker(fleet, files, RunningBroker(out, port, out / "x.conf", out / "x.log"))
    try:
        device = Client(broker, "dev-01")

        def connects() -> bool:
            try:
                return device.connect()
            except ConnectionRefusedError:  # not listening yet
                return False

        wait_until(connects, 20, "the broker's TLS listener")
        own = topics.status_topic(FLEET, "dev-01")
        assert device.publish(own, b"offline") in (0x00, 0x10)  # 0x10: no subscribers yet
        assert device.publish(topics.status_topic(FLEET, "dev-02"), b"x") >= 0x80  # ACL
        device.close()
        assert not Client(broker, "dev-01", password="wrong").connect(timeout=2)
    finally:
        process.terminate()
        output = process.communicate(timeout=20)[0].decode()
    assert f":{port} with {out / 'mosquitto.local.conf'}" in output
