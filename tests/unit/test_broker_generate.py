"""`ftte broker init`: config, hashes, ACL and idempotence, without starting the broker."""

import base64
import hashlib
import stat
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

import ftte.fileio
from broker.fleet import DeviceEntry, Fleet, FleetSection, SiteEntry, load_fleet
from broker.generate import (
    MIN_QUEUED_MESSAGES,
    OPERATOR_USER,
    ORCHESTRATOR_USER,
    QUEUED_PER_DEVICE,
    SHIPPED_PERSISTENCE,
    Persistence,
    init_broker,
    mosquitto_hash,
    rotate_device,
)
from edge_agent.config import DataSection, load_agent_config
from ftte.config import ConfigError
from ftte.transport.mqtt import BrokerSettings
from ftte.wire.messages import DeltaEncoding
from orchestrator.config import JobConfig, JobSection
from orchestrator.gateway_service import load_gateway_config
from orchestrator.influence import InfluenceSettings
from orchestrator.server import ServerSettings
from tests.fixtures.mosquitto import make_fleet


def test_password_hash_is_mosquittos_pbkdf2_sha512_format():
    digest = mosquitto_hash("secret", salt=b"0123456789ab")
    _, alg, rounds, salt, value = digest.split("$")
    assert (alg, rounds) == ("7", "101")
    expected = hashlib.pbkdf2_hmac("sha512", b"secret", b"0123456789ab", 101, 64)
    assert base64.b64decode(value) == expected and base64.b64decode(salt) == b"0123456789ab"


def test_config_has_tls_auth_acl_limits_and_persistence(tmp_path):
    files = init_broker(make_fleet(), tmp_path)
    conf = files.config.read_text()
    for directive in (
        "allow_anonymous false",
        "tls_version tlsv1.2",
        "password_file",
        "acl_file",
        "max_packet_size",
        "persistence true",
        "persistent_client_expiration 7d",
        "certfile",
        "keyfile",
    ):
        assert directive in conf
    assert conf.count("listener ") == 1


def directive(conf: str, name: str) -> str:
    (line,) = [line for line in conf.splitlines() if line.startswith(name + " ")]
    return line.split(" ", 1)[1]


def test_queue_limits_grow_with_the_fleet_and_are_bounded_by_bytes(tmp_path):
    small = init_broker(make_fleet(), tmp_path / "small").config.read_text()
    assert directive(small, "max_queued_messages") == str(MIN_QUEUED_MESSAGES)
    devices = [DeviceEntry(f"pi-{i}", 1000) for i in range(500)]
    section = FleetSection(name="big", broker_queue_bytes=64 * 2**20)
    big = init_broker(Fleet(section, devices), tmp_path / "big").config.read_text()
    # 500 devices with 16 queued messages each: the 2,000 of issue 13 fit 4 times over.
    assert directive(big, "max_queued_messages") == str(500 * QUEUED_PER_DEVICE) == "8000"
    assert directive(big, "max_queued_bytes") == str(64 * 2**20)


def test_a_queue_too_small_for_one_largest_message_is_refused():
    with pytest.raises(ValueError, match="broker_queue_bytes"):
        FleetSection(name="farm", broker_queue_bytes=1024)


def test_the_shipped_persistence_and_the_drop_counter_interval(tmp_path):
    conf = init_broker(make_fleet(), tmp_path).config.read_text()
    assert SHIPPED_PERSISTENCE.directives(Path("/p"))[0] == "persistence true"
    assert directive(conf, "autosave_interval") == str(SHIPPED_PERSISTENCE.autosave_interval)
    assert directive(conf, "autosave_on_changes") == "false"
    assert directive(conf, "sys_interval") == "10"
    assert Persistence(enabled=False).directives(Path("/p")) == ["persistence false"]


def test_the_listener_makes_each_username_its_client_id(tmp_path):
    lines = init_broker(make_fleet(), tmp_path).config.read_text().splitlines()
    listener = next(i for i, line in enumerate(lines) if line.startswith("listener "))
    # A listener option: before the listener line it would not apply to it.
    assert lines.index("use_username_as_clientid true") > listener


def test_the_longest_fleet_name_gets_a_ca(tmp_path):
    fleet = Fleet(FleetSection(name="f" * 64), [DeviceEntry("pi-1", 1000)])
    ca = x509.load_pem_x509_certificate(init_broker(fleet, tmp_path).ca_cert.read_bytes())
    assert ca.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "f" * 64


def test_acl_confines_each_device_to_its_own_topics(tmp_path):
    acl = init_broker(make_fleet(), tmp_path).acl_file.read_text()
    block = acl.split("user dev-03\n")[1].split("\n\n")[0]
    assert "topic write ftte/v1/test-fleet/dev/dev-03/update" in block
    assert "topic read ftte/v1/test-fleet/dev/dev-03/assign" in block
    assert "topic read ftte/v1/test-fleet/dev/dev-03/ack" in block
    assert "dev-04" not in block and "+" not in block
    assert "topic write ftte/v1/test-fleet/dev/dev-03/status" in block  # never read back
    assert f"user {ORCHESTRATOR_USER}" in acl


def test_the_orchestrator_may_acknowledge_to_every_device_and_read_the_drop_counter(tmp_path):
    acl = init_broker(make_fleet(), tmp_path).acl_file.read_text()
    block = acl.split(f"user {ORCHESTRATOR_USER}\n")[1].split("\n\n")[0]
    assert "topic write ftte/v1/test-fleet/dev/+/ack" in block
    assert "topic read $SYS/broker/publish/messages/dropped" in block


def test_acl_lets_the_operator_only_read_status_model_and_release(tmp_path):
    acl = init_broker(make_fleet(), tmp_path).acl_file.read_text()
    block = acl.split(f"user {OPERATOR_USER}\n")[1].split("\n\n")[0]
    assert block.splitlines() == [
        "topic read ftte/v1/test-fleet/dev/+/status",
        "topic read ftte/v1/test-fleet/model",
        "topic read ftte/v1/test-fleet/release",
    ]


def test_every_account_has_a_password_hash(tmp_path):
    files = init_broker(make_fleet(), tmp_path)
    users = [line.split(":")[0] for line in files.password_file.read_text().splitlines()]
    assert users == [ORCHESTRATOR_USER, OPERATOR_USER, *files.device_configs]


def test_secrets_are_private(tmp_path):
    files = init_broker(make_fleet(), tmp_path)
    for path in (
        files.server_key,
        files.orchestrator_credentials,
        files.operator_credentials,
        *files.device_configs.values(),
    ):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_generated_files_are_durable_with_their_folder_entries(tmp_path, monkeypatch):
    synced = set()
    monkeypatch.setattr(ftte.fileio, "fsync_dir", synced.add)
    init_broker(make_fleet(), tmp_path)
    assert synced == {tmp_path, tmp_path / "certs", tmp_path / "devices"}


def test_rerun_keeps_ca_keys_and_passwords(tmp_path):
    first = init_broker(make_fleet(), tmp_path)
    before = {
        p: p.read_bytes()
        for p in (
            first.ca_cert,
            first.server_key,
            first.password_file,
            first.orchestrator_credentials,
            first.operator_credentials,
            *first.device_configs.values(),
        )
    }
    again = init_broker(make_fleet(), tmp_path)
    assert all(p.read_bytes() == data for p, data in before.items())
    assert first.changed and again.changed == ()


def test_rotate_changes_only_one_device(tmp_path):
    fleet = make_fleet()
    files = init_broker(fleet, tmp_path)
    before = {d: p.read_text() for d, p in files.device_configs.items()}
    rotate_device(fleet, tmp_path, "dev-02")
    after = {d: p.read_text() for d, p in files.device_configs.items()}
    assert [d for d in before if before[d] != after[d]] == ["dev-02"]


def test_init_reports_what_a_rotation_changed(tmp_path):
    fleet = make_fleet()
    init_broker(fleet, tmp_path)
    (tmp_path / "devices" / "dev-01.toml").unlink()  # what `rotate` does before re-running
    changed = init_broker(fleet, tmp_path).changed
    # What a deploy must push again: that device's config and the broker's password file.
    assert {p.name for p in changed} == {"dev-01.toml", "passwd"}


def test_a_device_config_an_older_generator_broke_is_replaced(tmp_path):
    fleet = make_fleet()
    path = init_broker(fleet, tmp_path).device_configs["dev-01"]
    path.write_text('[agent]\ncompute_class = "pi "4""\n')  # unescaped quotes, as once written
    changed = init_broker(fleet, tmp_path).changed
    assert load_agent_config(path).agent.device_id == "dev-01"
    assert {p.name for p in changed} == {"dev-01.toml", "passwd"}


def test_rotating_an_unknown_device_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="not in fleet"):
        rotate_device(make_fleet(), tmp_path, "dev-99")


def test_fleet_file_errors_name_the_field(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text('[fleet]\nname = "farm"\n[[devices]]\nid = "Pi_7"\nmemory_budget_bytes = 5\n')
    with pytest.raises(ConfigError, match=r"devices\[0\].*lowercase"):
        load_fleet(path)


def test_duplicate_device_ids_are_refused(tmp_path):
    path = tmp_path / "fleet.toml"
    dev = '[[devices]]\nid = "pi-1"\nmemory_budget_bytes = 5\n'
    path.write_text('[fleet]\nname = "farm"\n' + dev + dev)
    with pytest.raises(ConfigError, match="duplicate"):
        load_fleet(path)


def site_fleet(sites=("north",)) -> Fleet:
    return Fleet(
        FleetSection(name="farm", broker_host="central.example"),
        [DeviceEntry("pi-001", 10**6), DeviceEntry("pi-101", 10**6, site="north")],
        [SiteEntry(name, host=f"{name}.example") for name in sites],
    )


def test_a_site_device_is_known_at_its_gateway_only_and_its_agent_connects_there(tmp_path):
    files = init_broker(site_fleet(), tmp_path)
    site = files.sites["north"]
    central_users = {line.split(":")[0] for line in files.password_file.read_text().split()}
    site_users = {line.split(":")[0] for line in (site / "passwd").read_text().split()}
    assert "pi-101" not in central_users and "ftte_site_north" in central_users
    assert site_users == {"pi-101"}
    agent = load_agent_config(files.device_configs["pi-101"])
    assert (agent.broker.host, agent.broker.port) == ("north.example", 8883)
    conf = (site / "mosquitto.conf").read_text()
    assert "address central.example:8883" in conf and "remote_username ftte_site_north" in conf
    assert "topic ftte/v1/farm/dev/pi-101/update out 1" in conf
    assert "pi-001" not in conf  # the central device is not bridged
    for secret in ("passwd", "acl", "mosquitto.conf", "bridge.toml", "certs/server.key"):
        assert stat.S_IMODE((site / secret).stat().st_mode) & 0o007 == 0, secret


def test_a_pre_aggregating_site_bridges_its_gateways_sums_instead_of_device_updates(tmp_path):
    fleet = site_fleet()
    fleet = Fleet(fleet.fleet, fleet.devices, [replace(fleet.sites[0], pre_aggregate=True)])
    files = init_broker(fleet, tmp_path)
    site = files.sites["north"]
    conf = (site / "mosquitto.conf").read_text()
    assert "topic ftte/v1/farm/site/north/sum out 1" in conf
    assert "topic ftte/v1/farm/dev/pi-101/update" not in conf
    site_acl = (site / "acl").read_text()
    assert "user ftte_gateway_north\ntopic read ftte/v1/farm/dev/pi-101/update\n" in site_acl
    central_acl = files.acl_file.read_text()
    assert "topic write ftte/v1/farm/site/north/sum" in central_acl
    assert "topic write ftte/v1/farm/dev/pi-101/update" not in central_acl
    gateway = load_gateway_config(site / "gateway.toml")
    assert (gateway.gateway.site, gateway.broker.username) == ("north", "ftte_gateway_north")
    site_users = {line.split(":")[0] for line in (site / "passwd").read_text().split()}
    assert site_users == {"pi-101", "ftte_gateway_north"}
    assert stat.S_IMODE((site / "gateway.toml").stat().st_mode) & 0o077 == 0


def job_config(tmp_path: Path, strategy: str = "ftte") -> JobConfig:
    return JobConfig(
        JobSection("j", "farm", tmp_path, strategy=strategy),
        BrokerSettings("central.example", 8883, "ftte-orchestrator", "x", tmp_path / "ca.crt"),
        server=ServerSettings(assignment_timeout_s=900.0),
        influence=InfluenceSettings(clip_factor=1.5, screen=True, equal_say_window=20),
    )


def test_a_gateway_takes_the_jobs_bounds_and_keeps_the_operators_settings_on_rerun(tmp_path):
    fleet = site_fleet()
    fleet = Fleet(fleet.fleet, fleet.devices, [replace(fleet.sites[0], pre_aggregate=True)])
    tables = job_config(tmp_path).gateway_tables()
    path = init_broker(fleet, tmp_path / "out", tables).sites["north"] / "gateway.toml"
    secret = load_gateway_config(path).broker.password
    with path.open("a") as f:
        f.write("\n[flush]\nmax_wait_s = 3.0\n")  # the operator's, by hand
    init_broker(fleet, tmp_path / "out")  # a later run without the job keeps its settings
    gateway = load_gateway_config(path)
    assert (gateway.gateway.site, gateway.gateway.fleet) == ("north", "farm")
    assert gateway.influence == InfluenceSettings(clip_factor=1.5, screen=True)
    assert gateway.gateway.assignment_timeout_s == 900.0
    assert gateway.gateway.delta_encoding is DeltaEncoding.INT8
    assert (gateway.flush.max_wait_s, gateway.broker.password) == (3.0, secret)


def test_a_job_whose_strategy_takes_no_combined_updates_is_refused_for_gateways(tmp_path):
    with pytest.raises(ValueError, match=r"job\.strategy = 'fedavg'.*pre_aggregate = false"):
        job_config(tmp_path, "fedavg").gateway_tables()


def test_a_rerun_keeps_a_sites_secrets_and_a_removed_site_is_gone(tmp_path):
    first = init_broker(site_fleet(), tmp_path)
    again = init_broker(site_fleet(), tmp_path)
    assert again.changed == ()
    assert first.sites == again.sites
    fleet = site_fleet(sites=())
    fleet = Fleet(fleet.fleet, fleet.devices[:1], [])
    init_broker(fleet, tmp_path)
    assert not (tmp_path / "sites" / "north").exists()


def test_a_device_of_an_unknown_site_is_refused_naming_the_field(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text(
        '[fleet]\nname = "farm"\n[[devices]]\nid = "pi-1"\nmemory_budget_bytes = 9\n'
        'site = "south"\n'
    )
    with pytest.raises(ConfigError, match=r"devices\[0\]\.site.*add it under \[\[sites\]\]"):
        load_fleet(path)


def test_a_devices_sensor_logs_in_fleet_toml_reach_its_agent_config(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text(
        '[fleet]\nname = "farm"\ntask = "vibration"\n'
        '[[devices]]\nid = "pi-1"\nmemory_budget_bytes = 9000000\n'
        '[devices.sensors]\npath = "/var/log/vib"\nwindow = 256\nstride = 64\n'
        'channels = ["ax", "ay"]\ntimestamp = "time"\n'
        '[[devices]]\nid = "pi-2"\nmemory_budget_bytes = 9000000\n'
        'loader = "farm.io:windows"\nloader_args = { site = "north", days = 3 }\n'
        "holdout = 0.2\n"
    )
    files = init_broker(load_fleet(path), tmp_path / "out")
    data = load_agent_config(files.device_configs["pi-1"]).data
    sensors = data.sensors
    assert (sensors.path, sensors.window, sensors.stride) == (Path("/var/log/vib"), 256, 64)
    assert sensors.channels == ["ax", "ay"] and sensors.timestamp == "time"
    assert data.holdout == DataSection.holdout  # the agent's default where fleet.toml is silent
    loader = load_agent_config(files.device_configs["pi-2"]).data
    assert loader.loader == "farm.io:windows" and loader.loader_args == {"site": "north", "days": 3}
    assert loader.holdout == 0.2 != DataSection.holdout
