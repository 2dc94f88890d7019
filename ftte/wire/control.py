"""Control-plane messages: device status (birth/will), update acknowledgements and the
retained model/job state.

They are small JSON documents, readable with ``mosquitto_sub`` by an operator, and parsed as
untrusted input: bounded size, known fields, checked types.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

from ftte.errors import Rejected, RejectReason
from ftte.ids import validate_id
from ftte.metrics import MetricError, check_metric
from ftte.tasks.objectives import OBJECTIVES

MAX_CONTROL_BYTES = 4096
OFFLINE = b"offline"  # the last will's payload: short, fixed, recognisable
MAX_REF_BYTES = 256  # an update or assignment id in a control message (the codec's string bound)
MAX_HELD = 16  # assignment ids a birth may list; an agent holds one or two
MAX_EXCLUDED_LISTED = 8  # excluded devices the job state names (it gives the count of all)
MAX_REASON_CHARS = 160  # of an exclusion's reason in the job state


@dataclass(frozen=True)
class DeviceStatus:
    """A device's retained birth message: who it is and what it can take on.

    ``assignments`` names what the agent holds at this (re)connect: the assignment it is
    training and those whose update it has finished but not yet seen journaled. An open
    assignment a live birth does not name was lost on the way (a broker crash) and is sent
    again, instead of waiting for its timeout. ``None``: an agent that does not report it.
    """

    device_id: str
    memory_budget_bytes: int
    compute_class: str
    software_version: str
    model_version: int  # version of the model values the device holds; -1: none
    assignments: tuple[str, ...] | None = None
    # The job whose model ``model_version`` counts versions of; None: an agent that does not
    # report it (its version is then trusted only within one run of the orchestrator).
    model_job: str | None = None

    def encode(self) -> bytes:
        """JSON bytes for the status topic."""
        doc = {"state": "online", **asdict(self)}
        if self.assignments is None:
            del doc["assignments"]
        else:
            doc["assignments"] = list(self.assignments)
        if self.model_job is None:
            del doc["model_job"]
        return json.dumps(doc).encode()


class Verdict(StrEnum):
    """What the orchestrator did with an update, as its acknowledgement tells the device."""

    JOURNALED = "journaled"  # appended to the journal (fsync'd): it counts, even after a crash
    DUPLICATE = "duplicate"  # the update that already answered its assignment, sent again
    REFUSED = "refused"  # decided and not applied (``reason`` says why): resending cannot help


@dataclass(frozen=True)
class UpdateAck:
    """Orchestrator to device (QoS 1, ``ack`` topic): this update is settled, forget it.

    The application-level acknowledgement: the broker's PUBACK only says the broker took the
    message, which a broker crash or a full queue can still lose.
    """

    update_id: str
    verdict: Verdict
    reason: str = ""  # the refusal's reason (a ``RejectReason`` value); "" unless refused

    def encode(self) -> bytes:
        """JSON bytes for the ack topic."""
        # Its fields by hand: asdict copies recursively, a cost on every update.
        fields = {"update_id": self.update_id, "verdict": self.verdict, "reason": self.reason}
        return json.dumps(fields).encode()


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
    # The objective's metrics of the newest version on the orchestrator's validation set
    # (empty when the task has none: the fleet's measure is then the only one).
    metrics: dict[str, float]
    buffer_fill: int
    devices_online: int
    accepted: int
    rejected: dict[str, int]
    heartbeat_unix_s: float  # wall time of this publication
    # Delivery counters: acknowledgements by verdict, assignments sent again or withdrawn
    # after a reconnect, refused publishes by PUBACK reason, messages the broker dropped.
    delivery: dict[str, int] = field(default_factory=dict)
    # Devices the planner turns away (budget too small): how many, and some with the reason
    # (at most MAX_EXCLUDED_LISTED, to keep the state within MAX_CONTROL_BYTES).
    excluded: int = 0
    excluded_devices: dict[str, str] = field(default_factory=dict)
    # Federated evaluation of the newest version enough devices reported on: its metrics
    # (sample-weighted over the devices' held-out data), "version" and "devices".
    fleet: dict[str, float] = field(default_factory=dict)
    objective: str = "classification"  # the task's (ftte.tasks.objectives): its primary metric

    def encode(self) -> bytes:
        """JSON bytes for the model topic."""
        return json.dumps(asdict(self)).encode()


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _load(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_CONTROL_BYTES:
        raise Rejected(RejectReason.OVERSIZED, f"control message of {len(payload)} B")
    try:
        doc = json.loads(payload, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise Rejected(RejectReason.MALFORMED, f"not JSON: {exc}") from None
    except RecursionError:
        raise Rejected(RejectReason.MALFORMED, "JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise Rejected(RejectReason.MALFORMED, "control message must be a JSON object")
    return doc


def _field(doc: dict[str, Any], name: str, kind: type, minimum: float | None = None) -> Any:
    """``doc[name]`` if it is exactly of ``kind`` (no bool for int, no float for int) and,
    for numbers, finite and within [minimum, 2**53]."""
    if name not in doc:
        raise Rejected(RejectReason.MALFORMED, f"{name} is missing")
    value: Any = doc[name]
    if kind is float and type(value) is int:
        value = float(value)
    if type(value) is not kind:
        raise Rejected(RejectReason.MALFORMED, f"{name} must be a {kind.__name__}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or abs(value) > 2**53:
            raise Rejected(RejectReason.MALFORMED, f"{name} is out of range")
        if minimum is not None and value < minimum:
            raise Rejected(RejectReason.MALFORMED, f"{name} must be >= {minimum}")
    return value


def _only(doc: dict[str, Any], fields: set[str], what: str) -> None:
    unknown = set(doc) - fields
    if unknown:
        raise Rejected(RejectReason.MALFORMED, f"{what}: unknown fields {sorted(unknown)[:5]}")


def _ref(value: Any, name: str) -> str:
    """An update or assignment id: a non-empty UTF-8 string within the codec's string bound."""
    try:
        size = len(value.encode()) if type(value) is str else 0
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape
        size = 0
    if not 0 < size <= MAX_REF_BYTES:
        raise Rejected(RejectReason.MALFORMED, f"{name} must be a string of 1-{MAX_REF_BYTES} B")
    return str(value)


def _counts(doc: dict[str, Any], name: str) -> dict[str, int]:
    """``doc[name]``: a small map of labels to counts."""
    counts = _field(doc, name, dict)
    if len(counts) > 64 or not all(
        isinstance(k, str) and type(v) is int and 0 <= v <= 2**53 for k, v in counts.items()
    ):
        raise Rejected(RejectReason.MALFORMED, f"{name} must map labels to counts")
    return counts


_STATUS_FIELDS = {"state", "device_id", "memory_budget_bytes", "compute_class"}
_STATUS_FIELDS |= {"software_version", "model_version", "assignments", "model_job"}


def decode_status(payload: bytes) -> DeviceStatus | None:
    """Parse a status payload; ``None`` means the device is offline (will or goodbye)."""
    if payload == OFFLINE:
        return None
    doc = _load(payload)
    if doc.get("state") != "online":
        return None
    _only(doc, _STATUS_FIELDS, "status")
    device_id = _field(doc, "device_id", str)
    try:
        validate_id(device_id, "device_id")
    except ValueError as exc:
        raise Rejected(RejectReason.MALFORMED, str(exc)) from None
    held = None
    if "assignments" in doc:
        listed = _field(doc, "assignments", list)
        if len(listed) > MAX_HELD:
            raise Rejected(RejectReason.MALFORMED, f"assignments lists over {MAX_HELD} ids")
        held = tuple(_ref(a, "assignments[]") for a in listed)
    return DeviceStatus(
        device_id=device_id,
        memory_budget_bytes=_field(doc, "memory_budget_bytes", int, minimum=1),
        compute_class=_field(doc, "compute_class", str)[:64],
        software_version=_field(doc, "software_version", str)[:64],
        model_version=_field(doc, "model_version", int, minimum=-1),
        assignments=held,
        model_job=_ref(doc["model_job"], "model_job") if "model_job" in doc else None,
    )


_REASONS = {r.value for r in RejectReason}


def decode_ack(payload: bytes) -> UpdateAck:
    """Parse an update acknowledgement; a refusal names a known reason, other verdicts none."""
    doc = _load(payload)
    _only(doc, {"update_id", "verdict", "reason"}, "ack")
    update_id = _ref(_field(doc, "update_id", str), "update_id")
    verdict_name = _field(doc, "verdict", str)
    try:
        verdict = Verdict(verdict_name)
    except ValueError:
        raise Rejected(RejectReason.MALFORMED, f"unknown verdict {verdict_name[:32]!r}") from None
    reason = _field(doc, "reason", str)
    refused = verdict is Verdict.REFUSED
    if (refused and reason not in _REASONS) or (not refused and reason):
        raise Rejected(RejectReason.MALFORMED, "a refusal names a known reason; others none")
    return UpdateAck(update_id, verdict, reason)


def decode_job_state(payload: bytes) -> JobState:
    """Parse the retained model-topic payload."""
    doc = _load(payload)
    _only(doc, {f.name for f in fields(JobState)}, "job state")
    return JobState(
        job=_field(doc, "job", str),
        state=_field(doc, "state", str),
        version=_field(doc, "version", int, minimum=0),
        metrics=_metric_map(doc, "metrics"),
        buffer_fill=_field(doc, "buffer_fill", int, minimum=0),
        devices_online=_field(doc, "devices_online", int, minimum=0),
        accepted=_field(doc, "accepted", int, minimum=0),
        rejected=_counts(doc, "rejected"),
        heartbeat_unix_s=_field(doc, "heartbeat_unix_s", float, minimum=0),
        # Optional: the retained state of an orchestrator from before delivery counters.
        delivery=_counts(doc, "delivery") if "delivery" in doc else {},
        excluded=_field(doc, "excluded", int, minimum=0) if "excluded" in doc else 0,
        excluded_devices=_reasons(doc) if "excluded_devices" in doc else {},
        fleet=_metric_map(doc, "fleet", counts=_FLEET_COUNTS) if "fleet" in doc else {},
        objective=_objective(doc) if "objective" in doc else "classification",
    )


_FLEET_COUNTS = ("version", "devices")


def _metric_map(doc: dict[str, Any], name: str, counts: tuple[str, ...] = ()) -> dict[str, float]:
    """``doc[name]``: metrics of the vocabulary (``ftte.metrics``) within their ranges, plus
    the non-negative ``counts`` named."""
    values = _field(doc, name, dict)
    out = {}
    for key in values:
        if key in counts:
            out[key] = float(_field(values, key, int, minimum=0))
            continue
        try:
            out[key] = check_metric(key, _field(values, key, float))
        except MetricError as exc:
            raise Rejected(RejectReason.MALFORMED, f"{name}: {exc}") from None
    return out


def _objective(doc: dict[str, Any]) -> str:
    name = _field(doc, "objective", str)
    if name not in OBJECTIVES:
        raise Rejected(RejectReason.MALFORMED, f"objective must be one of {sorted(OBJECTIVES)}")
    return str(name)


def _reasons(doc: dict[str, Any]) -> dict[str, str]:
    """``doc["excluded_devices"]``: a few device ids, each with a short reason."""
    reasons = _field(doc, "excluded_devices", dict)
    if len(reasons) > MAX_EXCLUDED_LISTED or not all(
        type(v) is str and len(v) <= MAX_REASON_CHARS for v in reasons.values()
    ):
        raise Rejected(RejectReason.MALFORMED, "excluded_devices must map a few ids to reasons")
    for device_id in reasons:
        _ref(device_id, "an excluded device id")
    return reasons
