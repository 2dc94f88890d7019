"""``ftte broker init``: Mosquitto 2 config, TLS material, passwords and ACL from a fleet.

One source of truth: this module writes every file the broker and the agents need; the
Ansible role and the dev launcher install or start exactly these files. Re-running keeps
the CA, keys and existing passwords (new devices get new credentials, removed devices
lose theirs), so it is safe to run on every deploy.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from broker.fleet import DeviceEntry, Fleet, SiteEntry
from broker.sites import bridge_acl, bridge_directives, gateway_acl, gateway_user, site_user
from edge_agent.config import AgentConfig, AgentSection, DataSection
from ftte import topics
from ftte.config import ConfigError, dump_section, read_toml, write_toml
from ftte.fileio import atomic_write
from ftte.transport.mqtt import BrokerSettings
from ftte.wire.limits import MQTT_MAX_PACKET_BYTES

# Not valid device ids (underscore), so no device can ever hold these names. With
# use_username_as_clientid each username is also the one client id its holder can use.
ORCHESTRATOR_USER = "ftte_orchestrator"
OPERATOR_USER = "ftte_operator"  # read-only: `ftte status`, `ftte broker wait-online`
INGEST_USER = "ftte_ingest_{}"  # ingest worker k (1-based): reads updates, writes hand-offs
# Messages queued for one client (Mosquitto's limit is per client; the orchestrator's queue
# is the one that fills: every device's updates while it is away). Per device: its pending
# update (one open assignment at a time), the copies an agent's resend backoff adds in an
# hour (30 s doubling to 8 min: about 11), births on reconnects. Past the limit Mosquitto
# drops the newest, which are copies; the orchestrator counts drops, the agents resend.
QUEUED_PER_DEVICE = 16
MIN_QUEUED_MESSAGES = 1000  # Mosquitto's own default, for small fleets
PBKDF2_ITERATIONS = 101  # what mosquitto_passwd 2.0 writes for $7$ hashes
CERT_DAYS = 3650


@dataclass(frozen=True)
class BrokerFiles:
    """Paths of everything ``init_broker`` wrote."""

    out_dir: Path
    config: Path
    password_file: Path
    acl_file: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    orchestrator_credentials: Path
    operator_credentials: Path
    device_configs: dict[str, Path]
    changed: tuple[Path, ...] = ()  # files written, re-moded or removed by this run
    sites: dict[str, Path] = field(default_factory=dict)  # each site gateway's folder
    ingest_credentials: tuple[Path, ...] = ()  # ingest-1.toml …: each ingest worker's account


def ingest_user(index: int) -> str:
    """The broker account of ingest worker ``index`` (1-based)."""
    return INGEST_USER.format(index)


def ingest_credentials_path(out_dir: Path, index: int) -> Path:
    """Where ``ftte broker init`` writes ingest worker ``index``'s account (1-based)."""
    return out_dir / f"ingest-{index}.toml"


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    """A password hash in Mosquitto 2's own ``$7$`` format (PBKDF2-SHA512, 101 rounds)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS, 64)
    salt64, digest64 = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"$7${PBKDF2_ITERATIONS}${salt64}${digest64}"


def _write(path: Path, text: str | bytes, mode: int = 0o644) -> None:
    """Write atomically and durably, with ``mode`` set before the content lands."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text.encode() if isinstance(text, str) else text, mode)


def _write_if_changed(path: Path, text: str, mode: int = 0o644) -> None:
    """Leave an identical file untouched, so deploys see no change on a re-run."""
    if path.exists() and path.read_text() == text:
        os.chmod(path, mode)
        return
    _write(path, text, mode)


def _ensure_ca(certs: Path, fleet_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key_path, cert_path = certs / "ca.key", certs / "ca.crt"
    if key_path.exists() and cert_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
    key = ec.generate_private_key(ec.SECP256R1())
    # X.509 caps a common name at 64 characters, as long as a fleet name alone may be.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, fleet_name),
            x509.NameAttribute(NameOID.COMMON_NAME, "ftte fleet CA"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _pem_key(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ensure_server_cert(
    certs: Path, host: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> None:
    key_path, cert_path = certs / "server.key", certs / "server.crt"
    names = {host, "localhost", "127.0.0.1"}
    if key_path.exists() and cert_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = {str(v) for v in san.get_values_for_type(x509.DNSName)}
        have |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
        if names <= have:
            return
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for n in sorted(names):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write(key_path, _pem_key(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def _existing_password(path: Path) -> str | None:
    try:
        password = read_toml(path).get("broker", {}).get("password")
    except FileNotFoundError:
        return None
    except ConfigError:
        return None  # unreadable (hand-written TOML did not escape): no agent could use it
    return password if isinstance(password, str) else None


def _existing_hashes(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    entries = (line.split(":", 1) for line in path.read_text().splitlines() if ":" in line)
    return {user: digest for user, digest in entries}


def _hash_for(user: str, password: str, old: dict[str, str]) -> str:
    """Reuse the old hash if it still matches, so an unchanged fleet rewrites nothing."""
    previous = old.get(user)
    if previous is not None:
        salt = base64.b64decode(previous.split("$")[3])
        if mosquitto_hash(password, salt) == previous:
            return previous
    return mosquitto_hash(password)


@dataclass(frozen=True)
class QueueLimits:
    """Mosquitto's per-client queue bounds: ``max_queued_messages`` and ``max_queued_bytes``."""

    messages: int
    bytes: int


def queue_limits(fleet: Fleet) -> QueueLimits:
    """Queue bounds sized for the fleet: messages by its device count, bytes by its memory cap."""
    messages = max(MIN_QUEUED_MESSAGES, QUEUED_PER_DEVICE * len(fleet.devices))
    return QueueLimits(messages, fleet.fleet.broker_queue_bytes)


@dataclass(frozen=True)
class Persistence:
    """How Mosquitto saves its in-memory state (sessions, queued and retained messages).

    It only saves a whole snapshot, every ``autosave_interval`` seconds, or every
    ``autosave_interval`` changes with ``autosave_on_changes``, and on a clean shutdown; a
    ``kill -9`` loses what changed since. ftte does not rely on it for updates (agents keep
    them until the orchestrator's acknowledgement) nor for assignments (sent again on
    reconnect); it spares a clean restart the resends. Costs measured by ``ftte bench
    delivery`` are in docs/operations.md.
    """

    enabled: bool = True
    autosave_interval: int = 60
    autosave_on_changes: bool = False

    def directives(self, persistence_dir: Path) -> list[str]:
        """The mosquitto.conf lines."""
        if not self.enabled:
            return ["persistence false"]
        return [
            "persistence true",
            f"persistence_location {persistence_dir}/",
            f"autosave_interval {self.autosave_interval}",
            f"autosave_on_changes {'true' if self.autosave_on_changes else 'false'}",
        ]


SHIPPED_PERSISTENCE = Persistence()


def acl_text(fleet: Fleet, site: str = "") -> str:
    """Per-user ACL blocks of the central broker (``site`` empty) or of a site gateway.

    Centrally: the orchestrator the fleet's topics, the operator reads status and model,
    each central device only its own topics, each site's bridge only its devices' topics.
    At a site: each of its devices only its own topics. Each right is one a component
    uses; Mosquitto denies everything not listed.
    """
    name = fleet.fleet.name
    lines = ["# Generated by `ftte broker init`; edit fleet.toml instead."]
    if not site:
        lines += [
            f"user {ORCHESTRATOR_USER}",
            f"topic read {topics.all_status_filter(name)}",
            # Write only to clear a retained message a device left on its update topic.
            f"topic readwrite {topics.all_updates_filter(name)}",
            f"topic write {topics.ROOT}/{name}/dev/+/assign",
            f"topic write {topics.ROOT}/{name}/dev/+/ack",
            f"topic write {topics.model_topic(name)}",
            f"topic write {topics.release_topic(name)}",
            f"topic read {topics.ingest_topic(name)}",
            f"topic read {topics.all_combined_filter(name)}",
            f"topic read {topics.BROKER_DROPPED}",
            "",
            f"user {OPERATOR_USER}",
            f"topic read {topics.all_status_filter(name)}",
            f"topic read {topics.model_topic(name)}",
            f"topic read {topics.release_topic(name)}",
            "",
        ]
        for index in range(1, fleet.fleet.ingest_workers + 1):
            # Read every update (through the shared subscription), hand validated ones to
            # the orchestrator; nothing else: a worker cannot assign, acknowledge or forge.
            lines += [
                f"user {ingest_user(index)}",
                f"topic read {topics.all_updates_filter(name)}",
                f"topic write {topics.ingest_topic(name)}",
                "",
            ]
        for entry in fleet.sites:
            lines += bridge_acl(fleet, entry)
    for entry in fleet.sites:
        if entry.name == site and entry.pre_aggregate:
            lines += gateway_acl(fleet, entry)
    for device in fleet.site_devices(site):
        d = device.id
        lines += [
            f"user {d}",
            f"topic write {topics.status_topic(name, d)}",
            f"topic write {topics.update_topic(name, d)}",
            f"topic read {topics.assign_topic(name, d)}",
            f"topic read {topics.ack_topic(name, d)}",
            f"topic read {topics.model_topic(name)}",
            f"topic read {topics.release_topic(name)}",
            "",
        ]
    return "\n".join(lines)


def mosquitto_conf(
    fleet: Fleet,
    config_dir: Path,
    *,
    port: int,
    bind_address: str,
    persistence_dir: Path,
    run_as: str,
    queue: QueueLimits | None = None,
    persistence: Persistence = SHIPPED_PERSISTENCE,
    bridge: list[str] | None = None,
) -> str:
    """The broker config; the field and the dev launcher differ only in these arguments
    (tests and benchmarks may also set the queue bounds and the persistence); a site
    gateway's adds its ``bridge`` section."""
    queue = queue or queue_limits(fleet)
    return "\n".join(
        [
            "# Generated by `ftte broker init`; edit fleet.toml instead.",
            "per_listener_settings false",
            f"user {run_as}",
            f"listener {port} {bind_address}",
            "protocol mqtt",
            f"cafile {config_dir / 'certs/ca.crt'}",
            f"certfile {config_dir / 'certs/server.crt'}",
            f"keyfile {config_dir / 'certs/server.key'}",
            "tls_version tlsv1.2",
            # The client id is the username, whatever the client sends: a client can only
            # resume, take over or clean its own session, never another identity's.
            "use_username_as_clientid true",
            # Devices authenticate with username + password over TLS: per-device client
            # certificates would make rotating one device's secret a PKI operation.
            "require_certificate false",
            "allow_anonymous false",
            f"password_file {config_dir / 'passwd'}",
            f"acl_file {config_dir / 'acl'}",
            # The codec's largest payload on the longest topic fits; nothing bigger can be valid.
            f"max_packet_size {MQTT_MAX_PACKET_BYTES}",
            *persistence.directives(persistence_dir),
            # Sleeping devices keep their session (and queued assignments) for a week.
            "persistent_client_expiration 7d",
            f"max_queued_messages {queue.messages}",
            f"max_queued_bytes {queue.bytes}",
            "max_inflight_messages 20",
            # How often $SYS/broker/publish/messages/dropped (read by the orchestrator) updates.
            "sys_interval 10",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages true",
            "",
            *(bridge or []),
        ]
    )


def _device_config(fleet: Fleet, index: int, device: DeviceEntry, password: str) -> AgentConfig:
    f = fleet.fleet
    host, port = f.broker_host, f.broker_port
    for site in fleet.sites:
        if site.name == device.site:
            host, port = site.host, site.port
    if device.data_path is not None:
        data = DataSection(task=f.task, path=device.data_path)
    elif device.sensors is not None:
        data = DataSection(task=f.task, sensors=device.sensors)
    elif device.loader is not None:
        data = DataSection(task=f.task, loader=device.loader, loader_args=device.loader_args)
    else:
        data = DataSection(task=f.task, partition=index, num_partitions=len(fleet.devices))
    if device.holdout is not None:
        data = replace(data, holdout=device.holdout)  # checked where the agent's default is
    return AgentConfig(
        agent=AgentSection(
            device_id=device.id,
            fleet=f.name,
            state_dir=f.agent_state_dir / device.id,
            memory_budget_bytes=device.memory_budget_bytes,
            compute_class=device.compute_class,
            slowdown=device.slowdown,
            runtime=device.runtime,
            training_budget_bytes=device.training_budget_bytes,
        ),
        # The CA sits next to the config in the device's folder.
        broker=BrokerSettings(host, port, device.id, password, Path("ca.crt")),
        data=data,
    )


def _write_toml_if_changed(path: Path, table: dict[str, Any], mode: int) -> None:
    """Leave a file that already holds ``table`` untouched, so deploys see no change."""
    try:
        unchanged = read_toml(path) == table
    except (FileNotFoundError, ConfigError):
        unchanged = False  # missing, or written by a generator that did not escape
    if unchanged:
        os.chmod(path, mode)
        return
    write_toml(path, table, mode)


def _snapshot(out_dir: Path) -> dict[Path, tuple[bytes, int]]:
    """Content and mode of every file under ``out_dir``."""
    return {p: (p.read_bytes(), p.stat().st_mode) for p in out_dir.rglob("*") if p.is_file()}


def init_broker(
    fleet: Fleet, out_dir: Path, gateway_job: Mapping[str, Mapping[str, Any]] | None = None
) -> BrokerFiles:
    """Write (or bring up to date) the broker's and the agents' files under ``out_dir``.

    ``gateway_job``: tables of each site gateway's ``gateway.toml`` that must match the
    job (``orchestrator.config.JobConfig.gateway_tables``); without it a gateway keeps what its
    file holds. ``changed`` lists what this run altered, so a deploy tool can report "no
    change".
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    before = _snapshot(out_dir)
    certs = out_dir / "certs"
    ca, ca_key = _ensure_ca(certs, fleet.fleet.name)
    _ensure_server_cert(certs, fleet.fleet.broker_host, ca, ca_key)
    devices_dir = out_dir / "devices"
    devices_dir.mkdir(exist_ok=True)
    # Each device's folder is self-contained: its config and the CA it trusts.
    _write_if_changed(devices_dir / "ca.crt", (certs / "ca.crt").read_text())
    old_hashes = _existing_hashes(out_dir / "passwd")
    orch_path = out_dir / "orchestrator.toml"
    orch_password = _existing_password(orch_path) or secrets.token_urlsafe(24)
    op_path = out_dir / "operator.toml"
    op_password = _existing_password(op_path) or secrets.token_urlsafe(24)
    hashes_ = [
        f"{ORCHESTRATOR_USER}:{_hash_for(ORCHESTRATOR_USER, orch_password, old_hashes)}",
        f"{OPERATOR_USER}:{_hash_for(OPERATOR_USER, op_password, old_hashes)}",
    ]
    ingest_paths = []
    ingest_passwords = []
    for index in range(1, fleet.fleet.ingest_workers + 1):
        path = ingest_credentials_path(out_dir, index)
        password = _existing_password(path) or secrets.token_urlsafe(24)
        user = ingest_user(index)
        hashes_.append(f"{user}:{_hash_for(user, password, old_hashes)}")
        ingest_paths.append(path)
        ingest_passwords.append(password)
    for stale in out_dir.glob("ingest-*.toml"):
        if stale not in ingest_paths:
            stale.unlink()
    device_configs = {}
    device_hashes: dict[str, list[str]] = {}  # per broker ("" central, else the site)
    for index, device in enumerate(fleet.devices):
        path = devices_dir / f"{device.id}.toml"
        password = _existing_password(path) or secrets.token_urlsafe(24)
        olds = (
            old_hashes
            if not device.site
            else _existing_hashes(_site_dir(out_dir, device.site) / "passwd")
        )
        entry = f"{device.id}:{_hash_for(device.id, password, olds)}"
        device_hashes.setdefault(device.site, []).append(entry)
        config = _device_config(fleet, index, device, password)
        _write_toml_if_changed(path, dump_section(config), 0o600)
        device_configs[device.id] = path
    hashes_ += device_hashes.get("", [])
    sites = {}
    for site in fleet.sites:
        folder = _site_dir(out_dir, site.name)
        password = _existing_password(folder / "bridge.toml") or secrets.token_urlsafe(24)
        hashes_.append(f"{site_user(site)}:{_hash_for(site_user(site), password, old_hashes)}")
        _write_site(
            fleet,
            site,
            folder,
            ca,
            ca_key,
            password,
            device_hashes.get(site.name, []),
            gateway_job or {},
        )
        sites[site.name] = folder
    for stale in (out_dir / "sites").glob("*") if (out_dir / "sites").exists() else ():
        if stale.name not in sites:
            _remove_tree(stale)
    keep = {f"{d.id}.toml" for d in fleet.devices}
    for stale in devices_dir.glob("*.toml"):
        if stale.name not in keep:
            stale.unlink()
    _write_if_changed(out_dir / "passwd", "\n".join(hashes_) + "\n", 0o640)
    _write_if_changed(out_dir / "acl", acl_text(fleet), 0o640)
    f = fleet.fleet
    accounts = [
        (orch_path, ORCHESTRATOR_USER, orch_password),
        (op_path, OPERATOR_USER, op_password),
    ]
    accounts += [
        (path, ingest_user(i), password)
        for i, (path, password) in enumerate(zip(ingest_paths, ingest_passwords, strict=True), 1)
    ]
    for path, user, password in accounts:
        account = BrokerSettings(f.broker_host, f.broker_port, user, password, Path("certs/ca.crt"))
        _write_toml_if_changed(path, {"broker": dump_section(account)}, 0o600)
    conf = mosquitto_conf(
        fleet,
        f.install_dir,
        port=f.broker_port,
        bind_address=f.bind_address,
        persistence_dir=f.persistence_dir,
        run_as="mosquitto",
    )
    _write_if_changed(out_dir / "mosquitto.conf", conf)
    after = _snapshot(out_dir)
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    return BrokerFiles(
        out_dir=out_dir,
        config=out_dir / "mosquitto.conf",
        password_file=out_dir / "passwd",
        acl_file=out_dir / "acl",
        ca_cert=certs / "ca.crt",
        server_cert=certs / "server.crt",
        server_key=certs / "server.key",
        orchestrator_credentials=orch_path,
        operator_credentials=op_path,
        device_configs=device_configs,
        changed=tuple(changed),
        sites=sites,
        ingest_credentials=tuple(ingest_paths),
    )


def _site_dir(out_dir: Path, site: str) -> Path:
    return out_dir / "sites" / site


def _remove_tree(path: Path) -> None:
    """A removed site's folder: its files, then its folders."""
    for p in sorted(path.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    path.rmdir()


def site_conf(
    fleet: Fleet,
    site: SiteEntry,
    config_dir: Path,
    *,
    port: int,
    bind_address: str,
    persistence_dir: Path,
    run_as: str,
    central: tuple[str, int],
    password: str,
) -> str:
    """A site gateway's broker config: the central one's, for the site's devices, plus
    the bridge to ``central`` (host, port)."""
    site_fleet = Fleet(fleet.fleet, fleet.site_devices(site.name))
    ca_file = config_dir / "certs/ca.crt"
    bridge = bridge_directives(fleet, site, central=central, ca_file=ca_file, password=password)
    return mosquitto_conf(
        site_fleet,
        config_dir,
        port=port,
        bind_address=bind_address,
        persistence_dir=persistence_dir,
        run_as=run_as,
        bridge=bridge,
    )


def _gateway_config(
    path: Path,
    gateway: dict[str, Any],
    broker: dict[str, Any],
    job: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """``gateway.toml``: what the file already holds (the operator's ``[flush]``, an
    earlier job's settings), under the fleet's names and the site broker's account, under
    the tables ``job`` gives."""
    try:
        config = read_toml(path)
    except (FileNotFoundError, ConfigError):
        config = {}
    for name, values in [*job.items(), ("gateway", gateway)]:  # the fleet's names win
        held = config.get(name)
        config[name] = {**(held if isinstance(held, dict) else {}), **values}
    config["broker"] = broker  # init's account, whole
    return config


def _write_site(
    fleet: Fleet,
    site: SiteEntry,
    folder: Path,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    password: str,
    hashes_: list[str],
    gateway_job: Mapping[str, Mapping[str, Any]],
) -> None:
    """A site gateway's folder: its config, TLS, passwords and ACL, and the bridge's secret."""
    certs = folder / "certs"
    _write_if_changed(certs / "ca.crt", ca.public_bytes(serialization.Encoding.PEM).decode())
    _ensure_server_cert(certs, site.host, ca, ca_key)
    if site.pre_aggregate:
        # The gateway process's account on the site broker, its secret beside the bridge's.
        path = folder / "gateway.toml"
        secret = _existing_password(path) or secrets.token_urlsafe(24)
        user = gateway_user(site)
        old = _existing_hashes(folder / "passwd")
        hashes_ = [*hashes_, f"{user}:{_hash_for(user, secret, old)}"]
        broker = {
            "host": site.host,
            "port": site.port,
            "username": user,
            "password": secret,
            "ca_file": "certs/ca.crt",
        }
        ours = {"site": site.name, "fleet": fleet.fleet.name, "task": fleet.fleet.task}
        _write_toml_if_changed(path, _gateway_config(path, ours, broker, gateway_job), 0o600)
    _write_if_changed(folder / "passwd", "\n".join(hashes_) + "\n", 0o640)
    _write_if_changed(folder / "acl", acl_text(fleet, site.name), 0o640)
    _write_toml_if_changed(folder / "bridge.toml", {"broker": {"password": password}}, 0o600)
    f = fleet.fleet
    conf = site_conf(
        fleet,
        site,
        site.install_dir,
        port=site.port,
        bind_address=site.bind_address,
        persistence_dir=site.persistence_dir,
        run_as="mosquitto",
        central=(f.broker_host, f.broker_port),
        password=password,
    )
    # The bridge's password is in it: as private as passwd.
    _write_if_changed(folder / "mosquitto.conf", conf, 0o640)


def rotate_device(fleet: Fleet, out_dir: Path, device_id: str) -> Path:
    """Give one device a new password; everything else stays as it is."""
    if device_id not in {d.id for d in fleet.devices}:
        raise ValueError(f"device {device_id!r} is not in fleet {fleet.fleet.name!r}")
    (out_dir / "devices" / f"{device_id}.toml").unlink(missing_ok=True)
    return init_broker(fleet, out_dir).device_configs[device_id]
