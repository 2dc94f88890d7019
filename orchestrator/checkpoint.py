"""Checkpoint files and the update journal: file I/O only; the state's schema is the server's.

The orchestrator acknowledges an update to the broker only after appending its raw bytes
to the journal and fsyncing it: once per batch of updates taken from its inbox (group
commit), before any of the batch is acknowledged. The records of the assignments opened in
the same loop turn share that fsync, and the assignments are sent only after it. A
checkpoint is
``TrainingServer.state_dict()`` written atomically (``ftte.fileio.atomic_write``); then the
journal is emptied. After a crash the
service loads the checkpoint and replays the journal through the same validation and
aggregation, so it resumes at the version it had reached, with every acknowledged update.

The file is msgpack (never pickle): numpy arrays become ``{"__ndarray__": [dtype, shape,
bytes]}``, everything else is already msgpack.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from ftte.fileio import atomic_write

CHECKPOINT = "checkpoint.msgpack"
JOURNAL = "journal.bin"
JOURNAL_BUFFER = 1 << 20  # bytes staged before a write to the journal's file
# The journal's entries are (MQTT topic, payload) for updates, and this pseudo-topic (``$``
# topics are the broker's, never a device's) for the engine's dispatch records.
DISPATCH = "$ftte/dispatch"
_ND = "__ndarray__"


def _pack_default(value: object) -> object:
    if isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        return {_ND: [arr.dtype.str, list(arr.shape), arr.tobytes()]}
    if isinstance(value, np.integer | np.floating):
        return value.item()
    raise TypeError(f"cannot checkpoint a {type(value).__name__}")


def _unpack_hook(obj: dict[str, Any]) -> object:
    if _ND in obj and len(obj) == 1:
        dtype, shape, data = obj[_ND]
        return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy()
    return obj


def save_state(run_dir: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` as the run's checkpoint, atomically; return its path."""
    path = run_dir / CHECKPOINT
    atomic_write(path, msgpack.packb(state, default=_pack_default, use_bin_type=True))
    return path


def load_state(run_dir: Path) -> dict[str, Any] | None:
    """The run's checkpointed state, or ``None`` if it has none yet."""
    path = run_dir / CHECKPOINT
    if not path.exists():
        return None
    state: dict[str, Any] = msgpack.unpackb(
        path.read_bytes(), object_hook=_unpack_hook, raw=False, strict_map_key=False
    )
    return state


class Journal:
    """Append-only, length-prefixed log of raw update payloads since the last checkpoint."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / JOURNAL
        # Entries are staged in a buffer of their own and reach the file in large writes
        # (at a sync, or when it fills): with the default 8 KiB buffer every update was
        # its own write call (measured: 11 → 7 µs of CPU per 13.7 KB update).
        self._file = self.path.open("ab", buffering=JOURNAL_BUFFER)

    def stage_dispatch(self, record: dict[str, Any]) -> None:
        """Append one dispatch record (``TrainingServer.dispatch_record``): durable at the
        next ``sync``, which the service makes before it sends the assignments."""
        self.stage(DISPATCH, msgpack.packb(record, use_bin_type=True))

    def append(self, topic: str, payload: bytes) -> None:
        """Persist one received update durably (returns after fsync)."""
        self.stage(topic, payload)
        self.sync()

    def stage(self, topic: str, payload: bytes) -> None:
        """Append one entry without waiting for the disk: durable at the next ``sync`` (or
        any later ``append``, the file being written in order). Group commit: one fsync
        costs as much as the rest of an update's handling (issue 14: 1,359 vs 3,416/s)."""
        head = topic.encode()
        self._file.write(struct.pack("<II", len(head), len(payload)) + head)
        self._file.write(payload)

    def sync(self) -> None:
        """Make every entry staged so far durable (flush, fsync)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def entries(self) -> Iterator[tuple[str, bytes]]:
        """Every complete entry; a torn tail from a crash mid-append is ignored."""
        data = self.path.read_bytes()
        offset = 0
        while offset + 8 <= len(data):
            head_len, body_len = struct.unpack_from("<II", data, offset)
            end = offset + 8 + head_len + body_len
            if end > len(data):
                break
            topic = data[offset + 8 : offset + 8 + head_len].decode(errors="replace")
            yield topic, data[offset + 8 + head_len : end]
            offset = end

    def is_empty(self) -> bool:
        """Whether nothing, not even a torn entry, was ever appended since the last truncate."""
        return self.path.stat().st_size == 0

    def truncate(self) -> None:
        """Forget everything: a checkpoint now holds it."""
        self._file.truncate(0)
        self._file.seek(0)
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def decode_dispatch(payload: bytes) -> dict[str, Any]:
    """A dispatch record read back from the journal."""
    record: dict[str, Any] = msgpack.unpackb(payload, raw=False)
    return record
