"""Fleet and device ids: they become MQTT topic levels and broker usernames, so they are strict."""

from __future__ import annotations

import re

MAX_ID_LENGTH = 64
_ID = re.compile(rf"[a-z0-9][a-z0-9-]{{0,{MAX_ID_LENGTH - 1}}}")


def validate_id(value: str, what: str) -> str:
    """Return ``value`` if it is a valid id; otherwise a ValueError naming ``what``."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ValueError(
            f"{what} {value!r}: use 1-{MAX_ID_LENGTH} lowercase letters, digits and dashes, "
            "starting with a letter or digit (never '+', '#' or '/')"
        )
    return value
