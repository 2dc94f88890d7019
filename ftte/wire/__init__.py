"""Wire format: the one codec for assignments and updates, and its size limits."""

from ftte.wire.codec import (
    WIRE_VERSION,
    ModelForms,
    decode_assignment,
    decode_update,
    encode_assignment,
    encode_update,
)
from ftte.wire.limits import WireLimits

__all__ = [
    "WIRE_VERSION",
    "ModelForms",
    "WireLimits",
    "decode_assignment",
    "decode_update",
    "encode_assignment",
    "encode_update",
]
