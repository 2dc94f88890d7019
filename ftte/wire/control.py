"""Control-plane messages: device status (birth/will) and the retained model/job state.

They are small JSON documents, readable with ``mosquitto_sub`` by an operator, and parsed as
untrusted input: bounded size, known fields, checked types.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from ftte.errors import Rejected, RejectReason
from ftte.ids import validate_id

MAX_CONTROL_BYTES = 4096
OFFLINE = b"offline"  # the last will's payload: short, fixed, recognisable


@dataclass(frozen=True)
class DeviceStatus:
    """A device's retained birth message: who it is and what it can take on."""

    device_id: str
    memory_budget_bytes: int
    compute_class: str
    software_version: str
    model_version: int  # version of the model values the device holds; -1: none

    def encode(self) -> bytes:
        """JSON bytes for the status topic."""
        return json.dumps({"state": "online", **asdict(self)}).encode()


HEARTBEAT_S = 2.0  # the orchestrator republishes its state at least this often while running
GONE = "gone"  # the state in the orchestrator's last will: its connection died


@dataclass(frozen=True)
class JobState:
    """The orchestrator's retained model topic: version, progress, counters and liveness.

    While running it is republished every ``HEARTBEAT_S`` with ``heartbeat_unix_s``; its last
    will (retained, published by the broker when the connection dies) has state ``gone``.
    """

    job: str
    state: str  # "running" | "done" | "gone"
    version: int
    accuracy: float
    buffer_fill: int
    devices_online: int
    accepted: int
    rejected: dict[str, int]
    heartbeat_unix_s: float  # wall time of this publication

    def encode(self) -> bytes:
        """JSON bytes for the model topic."""
        return json.dumps(asdict(self)).encode()


def _load(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_CONTROL_BYTES:
        raise Rejected(RejectReason.OVERSIZED, f"control message of {len(payload)} B")
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Rejected(RejectReason.MALFORMED, f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise Rejected(RejectReason.MALFORMED, "control message must be a JSON object")
    return doc


def decode_status(payload: bytes) -> DeviceStatus | None:
    """Parse a status payload; ``None`` means the device is offline (will or goodbye)."""
    if payload == OFFLINE:
        return None
    doc = _load(payload)
    if doc.pop("state", None) != "online":
        return None
    try:
        status = DeviceStatus(
            device_id=validate_id(str(doc["device_id"]), "device_id"),
            memory_budget_bytes=int(doc["memory_budget_bytes"]),
            compute_class=str(doc["compute_class"])[:64],
            software_version=str(doc["software_version"])[:64],
            model_version=int(doc["model_version"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise Rejected(RejectReason.MALFORMED, f"bad status message: {exc}") from None
    if status.memory_budget_bytes <= 0:
        raise Rejected(RejectReason.MALFORMED, "memory_budget_bytes must be positive")
    return status


def decode_job_state(payload: bytes) -> JobState:
    """Parse the retained model-topic payload."""
    doc = _load(payload)
    try:
        return JobState(**doc)
    except TypeError as exc:
        raise Rejected(RejectReason.MALFORMED, f"bad job state: {exc}") from None
