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

What is not built: pre-aggregation at the gateway (one combined update per site instead of
one per device); each device's update still crosses the link.
"""

from __future__ import annotations

from pathlib import Path

from broker.fleet import Fleet, SiteEntry
from ftte import topics

SITE_USER_PREFIX = "ftte_site_"  # underscore: no device id can collide with a site account


def site_user(site: SiteEntry) -> str:
    """The central broker's username (and client id) of a site's bridge."""
    return f"{SITE_USER_PREFIX}{site.name}"


def device_topics(fleet_name: str, device_id: str) -> dict[str, str]:
    """A device's own topics, by the direction a bridge forwards them."""
    return {
        topics.status_topic(fleet_name, device_id): "out",
        topics.update_topic(fleet_name, device_id): "out",
        topics.assign_topic(fleet_name, device_id): "in",
        topics.ack_topic(fleet_name, device_id): "in",
    }


def bridge_acl(fleet: Fleet, site: SiteEntry) -> list[str]:
    """The central ACL block of a site's bridge account."""
    name = fleet.fleet.name
    lines = [f"user {site_user(site)}"]
    for device in fleet.site_devices(site.name):
        for topic, direction in device_topics(name, device.id).items():
            lines.append(f"topic {'write' if direction == 'out' else 'read'} {topic}")
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
        for topic, direction in device_topics(name, device.id).items():
            lines.append(f"topic {topic} {direction} 1")
    shared = (topics.model_topic(name), topics.release_topic(name))
    return [*lines, *(f"topic {topic} in 1" for topic in shared), ""]
