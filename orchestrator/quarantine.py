"""Where a message that could not be handled is set aside for inspection, boundedly.

A payload that raised while being handled (or a refused one that did not even decode) is
written here with its topic and reason, so an operator can see what a device sent; the
folder keeps only the newest ``max_files``, so an attacker cannot fill the disk with it.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import msgpack

from ftte.fileio import atomic_write


class Quarantine:
    """A bounded folder of set-aside messages (msgpack: topic, reason, detail, payload)."""

    def __init__(self, folder: Path, max_files: int = 200) -> None:
        if max_files < 1:
            raise ValueError("max_files must be at least 1")
        self.folder = folder
        self.max_files = max_files
        self._seq = itertools.count()
        folder.mkdir(parents=True, exist_ok=True)

    def put(self, topic: str, payload: bytes, reason: str, detail: str) -> Path:
        """Keep one message; drop the oldest beyond ``max_files``."""
        path = self.folder / f"{time.time_ns():020d}-{next(self._seq):06d}-{reason}.msgpack"
        record = {"topic": topic, "reason": reason, "detail": detail, "payload": payload}
        atomic_write(path, msgpack.packb(record, use_bin_type=True))
        kept = sorted(self.folder.glob("*.msgpack"))
        for old in kept[: max(0, len(kept) - self.max_files)]:
            old.unlink(missing_ok=True)
        return path

    def files(self) -> list[Path]:
        """What is kept, oldest first."""
        return sorted(self.folder.glob("*.msgpack"))
