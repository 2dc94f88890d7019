"""Site gateways: a Mosquitto per site, bridged to the central broker.

For farms and plants whose sites sit behind slow or intermittent links: the site's devices
connect to their gateway's broker (its own TLS listener, passwords and ACL, holding only
that site's devices), and the gateway keeps one bridge connection to the central broker
with its own account, ``ftte_site_{name}``. The bridge forwards each of the site's devices'
status and update topics up and their assignment and acknowledgement topics, and the
model and release topics, down — topic by topic, nothing else — and the central ACL
allows that account exactly those topics, so a compromised gateway can speak for its own
site's devices only.
The bridge queues in both directions while the link is down (QoS 1, a persistent session).

With ``pre_aggregate``, a gateway process on the site (``ftte gateway``, account
``ftte_gateway_{name}`` on the site broker) reads the site's device updates there and
sends one combined update per flush on the site's ``sum`` topic; the bridge forwards that
topic up instead of the devices' update topics (orchestrator.gateway).
"""

from __future__ import annotations

from pathlib import Path

from broker.fleet import Fleet, SiteEntry
from ftte import topics

SITE_USER_PREFIX = "ftte_site_"  # underscore: no device id can collide with a site account
GATEWAY_USER_PREFIX = "ftte_gateway_"  # the gateway process's account on the site broker


def site_user(site: SiteEntry) -> str:
    """The central broker's username (and client id) of a site's bridge."""
    return f"{SITE_USER_PREFIX}{site.name}"


def gateway_user(site: SiteEntry) -> str:
    """The site broker's username (and client id) of the site's gateway process."""
    return f"{GATEWAY_USER_PREFIX}{site.name}"


def device_topics(fleet_name: str, device_id: str, pre_aggregate: bool = False) -> dict[str, str]:
    """A device's own topics, by the direction a bridge forwards them (its updates stay on
    a pre-aggregating site: the gateway process combines them)."""
    bridged = {
        topics.status_topic(fleet_name, device_id): "out",
        topics.update_topic(fleet_name, device_id): "out",
        topics.assign_topic(fleet_name, device_id): "in",
        topics.ack_topic(fleet_name, device_id): "in",
    }
    if pre_aggregate:
        del bridged[topics.update_topic(fleet_name, device_id)]
    return bridged


def site_topics(fleet_name: str, site: SiteEntry) -> dict[str, str]:
    """The site's own topics a bridge forwards: its combined updates, if it makes them."""
    return {topics.combined_topic(fleet_name, site.name): "out"} if site.pre_aggregate else {}


def gateway_acl(fleet: Fleet, site: SiteEntry) -> list[str]:
    """The site ACL block of its gateway process: read its devices' updates, and their
    assignments and status (which updates the orchestrator will take), send sums."""
    name = fleet.fleet.name
    lines = [f"user {gateway_user(site)}"]
    for device in fleet.site_devices(site.name):
        for topic in (
            topics.update_topic(name, device.id),
            topics.assign_topic(name, device.id),
            topics.status_topic(name, device.id),
        ):
            lines.append(f"topic read {topic}")
    return [*lines, f"topic write {topics.combined_topic(name, site.name)}", ""]


def bridge_acl(fleet: Fleet, site: SiteEntry) -> list[str]:
    """The central ACL block of a site's bridge account."""
    name = fleet.fleet.name
    lines = [f"user {site_user(site)}"]
    for device in fleet.site_devices(site.name):
        for topic, direction in device_topics(name, device.id, site.pre_aggregate).items():
            lines.append(f"topic {'write' if direction == 'out' else 'read'} {topic}")
    lines += [f"topic write {topic}" for topic in site_topics(name, site)]
    shared = (topics.model_topic(name), topics.release_topic(name))
    return [*lines, *(f"topic read {topic}" for topic in shared), ""]


def bridge_directives(
    fleet: Fleet, site: SiteEntry, *, central: tuple[str, int], ca_file: Path, password: str
) -> list[str]:
    """The site broker's bridge section: one connection to the central broker."""
    name = fleet.fleet.name
    host, port = central
    lines = [
        f"connection ftte-central-{site.name}",
        f"address {host}:{port}",
        f"bridge_cafile {ca_file}",
        "bridge_tls_version tlsv1.2",
        "bridge_insecure false",
        "bridge_protocol_version mqttv50",
        f"remote_username {site_user(site)}",
        f"remote_password {password}",
        f"remote_clientid {site_user(site)}",
        # A persistent session at the central broker: what is sent down while the link is
        # down waits there; local_cleansession false keeps what waits to go up.
        "cleansession false",
        "local_cleansession false",
        # The central ACL gives the bridge no $SYS topic to announce itself on.
        "notifications false",
        "try_private true",
        "restart_timeout 2 30",
    ]
    for device in fleet.site_devices(site.name):
        for topic, direction in device_topics(name, device.id, site.pre_aggregate).items():
            lines.append(f"topic {topic} {direction} 1")
    lines += [f"topic {topic} out 1" for topic in site_topics(name, site)]
    shared = (topics.model_topic(name), topics.release_topic(name))
    return [*lines, *(f"topic {topic} in 1" for topic in shared), ""]
