"""Size limits for decoding untrusted bytes, checked before anything is allocated."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WireLimits:
    """Bounds on one message; defaults fit tiny-ML models (up to ~1M float32 parameters).

    The broker's ``max_packet_size`` is derived from ``max_compressed_bytes`` (see
    ``broker/generate.py``) so an oversized payload is refused at the broker already.
    """

    max_compressed_bytes: int = 4 * 1024 * 1024
    max_decompressed_bytes: int = 16 * 1024 * 1024
    max_tensors: int = 256
    max_string_bytes: int = 256  # ids and tensor names
    max_rank: int = 8

    def __post_init__(self) -> None:
        for name in ("max_compressed_bytes", "max_decompressed_bytes", "max_tensors"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
