"""The one topic scheme (MQTT v5). Everything that names a topic calls this module.

ftte/v1/{fleet}/dev/{device}/status   retained birth (capabilities); last will "offline"
ftte/v1/{fleet}/dev/{device}/assign   orchestrator -> device, QoS 1, message expiry
ftte/v1/{fleet}/dev/{device}/update   device -> orchestrator, QoS 1
ftte/v1/{fleet}/dev/{device}/ack      orchestrator -> device, QoS 1: the update is journaled
ftte/v1/{fleet}/model                 retained model version and job state
ftte/v1/{fleet}/release               retained release: the model the devices serve
ftte/v1/{fleet}/ingest                ingest workers -> orchestrator, QoS 1: validated updates
ftte/v1/{fleet}/site/{site}/sum       a site gateway's combined updates -> orchestrator, QoS 1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ftte.ids import validate_id

ROOT = "ftte/v1"
Kind = Literal["status", "assign", "update", "ack", "model"]
DEVICE_KINDS = ("status", "assign", "update", "ack")
# Mosquitto's own counter of messages it dropped because a client's queue was full (it is
# republished every ``sys_interval``); not a topic of the ftte scheme, but named once here.
BROKER_DROPPED = "$SYS/broker/publish/messages/dropped"


@dataclass(frozen=True)
class TopicRef:
    """A parsed topic: which fleet, which device (None for the model topic), which kind."""

    fleet: str
    device: str | None
    kind: Kind


def device_topic(fleet: str, device: str, kind: Kind) -> str:
    """The topic of ``kind`` for one device."""
    if kind not in DEVICE_KINDS:
        raise ValueError(f"{kind!r} is not a device topic kind")
    return f"{ROOT}/{validate_id(fleet, 'fleet')}/dev/{validate_id(device, 'device id')}/{kind}"


def status_topic(fleet: str, device: str) -> str:
    """Where a device announces itself (retained) and its last will lands."""
    return device_topic(fleet, device, "status")


def assign_topic(fleet: str, device: str) -> str:
    """Where the orchestrator sends a device its slice."""
    return device_topic(fleet, device, "assign")


def update_topic(fleet: str, device: str) -> str:
    """Where a device sends its delta."""
    return device_topic(fleet, device, "update")


def ack_topic(fleet: str, device: str) -> str:
    """Where the orchestrator tells a device that one of its updates is journaled (or settled)."""
    return device_topic(fleet, device, "ack")


def model_topic(fleet: str) -> str:
    """The retained model version and job state of a fleet."""
    return f"{ROOT}/{validate_id(fleet, 'fleet')}/model"


def release_topic(fleet: str) -> str:
    """The retained release of a fleet: the trained model its devices keep and serve."""
    return f"{ROOT}/{validate_id(fleet, 'fleet')}/release"


def ingest_topic(fleet: str) -> str:
    """Where ingest workers hand validated updates to the orchestrator that owns the model."""
    return f"{ROOT}/{validate_id(fleet, 'fleet')}/ingest"


def combined_topic(fleet: str, site: str) -> str:
    """Where a site gateway sends its devices' updates, combined (``orchestrator.gateway``)."""
    return f"{ROOT}/{validate_id(fleet, 'fleet')}/site/{validate_id(site, 'site name')}/sum"


def all_combined_filter(fleet: str) -> str:
    """Subscription filter for every site gateway's combined updates."""
    return f"{ROOT}/{validate_id(fleet, 'fleet')}/site/+/sum"


def parse_combined(topic: str) -> str | None:
    """The site whose combined-update topic ``topic`` is, or None if it is none."""
    parts = topic.split("/")
    if len(parts) != 6 or parts[:2] != ROOT.split("/") or parts[3:6:2] != ["site", "sum"]:
        return None
    validate_id(parts[2], "fleet")
    return validate_id(parts[4], "site name")


def all_status_filter(fleet: str) -> str:
    """Subscription filter for every device's status."""
    return f"{ROOT}/{validate_id(fleet, 'fleet')}/dev/+/status"


def all_assignments_filter(fleet: str) -> str:
    """Subscription filter for every device's assignments (a site gateway's view)."""
    return f"{ROOT}/{validate_id(fleet, 'fleet')}/dev/+/assign"


def all_updates_filter(fleet: str, share_group: str | None = None) -> str:
    """Subscription filter for every device's updates; a shared one splits the load."""
    base = f"{ROOT}/{validate_id(fleet, 'fleet')}/dev/+/update"
    if share_group is None:
        return base
    return f"$share/{validate_id(share_group, 'share group')}/{base}"


def parse(topic: str) -> TopicRef:
    """Parse a concrete topic of the scheme; anything else is a ValueError."""
    parts = topic.split("/")
    if parts[:2] != ROOT.split("/"):
        raise ValueError(f"not an ftte topic: {topic!r}")
    if len(parts) == 4 and parts[3] == "model":
        return TopicRef(validate_id(parts[2], "fleet"), None, "model")
    if len(parts) == 6 and parts[3] == "dev" and parts[5] in DEVICE_KINDS:
        kind: Kind = parts[5]  # type: ignore[assignment]
        return TopicRef(validate_id(parts[2], "fleet"), validate_id(parts[4], "device id"), kind)
    raise ValueError(f"not an ftte topic: {topic!r}")
