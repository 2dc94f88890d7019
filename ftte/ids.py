"""Fleet and device ids: they become MQTT topic levels and broker usernames, so they are strict."""

from __future__ import annotations

import re

_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


def validate_id(value: str, what: str) -> str:
    """Return ``value`` if it is a valid id; otherwise a ValueError naming ``what``."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ValueError(
            f"{what} {value!r}: use 1-64 lowercase letters, digits and dashes, "
            "starting with a letter or digit (never '+', '#' or '/')"
        )
    return value
