"""The one error type for input ftte refuses, with a machine-readable reason."""

from __future__ import annotations

from enum import StrEnum


class RejectReason(StrEnum):
    """Why a message or update was refused; used as a counter label and telemetry tag."""

    OVERSIZED = "oversized"  # compressed or declared decompressed size over the limit
    MALFORMED = "malformed"  # not zstd, not msgpack, wrong schema or field types, trailing data
    BAD_VERSION = "bad_version"  # wire format version this build does not speak
    TOO_MANY_TENSORS = "too_many_tensors"
    BAD_DTYPE = "bad_dtype"  # dtype not on the whitelist
    BAD_SHAPE = "bad_shape"  # byte length does not match shape, or shape differs from the model
    WRONG_SLICE = "wrong_slice"  # tensor names differ from the assigned slice
    NON_FINITE = "non_finite"  # NaN or infinity in a tensor or a scalar field
    REPLAYED = "replayed"  # another answer to an assignment already answered
    # The very update that answered the device's last assignment, sent again because its
    # acknowledgement was lost (a broker crash): acknowledged again, never applied twice.
    DUPLICATE = "duplicate"
    TOO_STALE = "too_stale"  # base version older than the staleness limit allows
    UNKNOWN_DEVICE = (
        "unknown_device"  # sender not in the fleet, or not the device the payload names
    )
    UNEXPECTED = "unexpected"  # no open assignment for this update


class Rejected(Exception):
    """Input refused before it touched any state; ``reason`` says why in one word.

    An update refused for its tensors still names, from its decoded header, the device,
    assignment and update id it claims, so the server can tell a device's own failed answer
    (which frees it for a new assignment) from a stray or forged payload (which must not),
    and a resend of an update it already settled from either.
    """

    def __init__(
        self,
        reason: RejectReason,
        detail: str,
        *,
        device_id: str | None = None,
        assignment_id: str | None = None,
        update_id: str | None = None,
    ) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.device_id = device_id
        self.assignment_id = assignment_id
        self.update_id = update_id
