"""Atomic checkpoints and the update journal: nothing acknowledged to the broker is lost.

The orchestrator acknowledges an update to the broker only after appending its raw bytes
to the journal (fsync'd). A checkpoint (model, version, tensor stamps, buffered updates,
registry with open assignments, seen update ids, counters) is written to a temporary file,
fsync'd and renamed over the old one; then the journal is emptied. After a crash the
service loads the checkpoint and replays the journal through the same validation and
aggregation, so it resumes at the version it had reached, with every acknowledged update.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ftte.wire import decode_update, encode_update
from ftte.wire.messages import Assignment, DeltaEncoding
from orchestrator.server import DeviceRecord, TrainingServer
from orchestrator.strategies.base import ReceivedUpdate

CHECKPOINT = "checkpoint.npz"
JOURNAL = "journal.bin"


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(server: TrainingServer, run_dir: Path) -> Path:
    """Write the server's whole state atomically; return the checkpoint path."""
    meta: dict[str, Any] = {
        "version": server.version,
        "stamps": server.stamps,
        "accepted": server.accepted,
        "rejected": dict(server.rejected),
        "seen_update_ids": sorted(server.seen_update_ids),
        "devices": [_device_to_json(d) for d in server.devices.values()],
        "buffer_ages": [r.age for r in server.strategy.buffered()],
        "next_assignment": server.next_assignment_number(),
    }
    arrays: dict[str, np.ndarray] = {f"param/{n}": a for n, a in server.params.items()}
    for i, received in enumerate(server.strategy.buffered()):
        blob = encode_update(received.update, DeltaEncoding.FLOAT32)
        arrays[f"buffer/{i}"] = np.frombuffer(blob, dtype=np.uint8)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path = run_dir / CHECKPOINT
    _atomic_savez(path, arrays)
    return path


def load_checkpoint(server: TrainingServer, run_dir: Path) -> bool:
    """Restore the server from ``run_dir``'s checkpoint if there is one; say whether."""
    path = run_dir / CHECKPOINT
    if not path.exists():
        return False
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(f["meta"].tobytes())
        for name in server.params:
            server.params[name][...] = f[f"param/{name}"]
        buffered = [
            ReceivedUpdate(decode_update(f[f"buffer/{i}"].tobytes()), age)
            for i, age in enumerate(meta["buffer_ages"])
        ]
    server.version = meta["version"]
    server.stamps.update(meta["stamps"])
    server.accepted = meta["accepted"]
    server.rejected.clear()
    server.rejected.update(meta["rejected"])
    server.seen_update_ids = set(meta["seen_update_ids"])
    server.devices = {d["device_id"]: _device_from_json(d) for d in meta["devices"]}
    server.restore_assignment_number(meta["next_assignment"])
    server.strategy.restore(buffered, server.in_flight())
    return True


def _device_to_json(d: DeviceRecord) -> dict[str, Any]:
    a = d.open_assignment
    return {
        "device_id": d.device_id,
        "budget_bytes": d.budget_bytes,
        "online": d.online,
        "synced_version": d.synced_version,
        "excluded": d.excluded,
        "open": None
        if a is None
        else {"id": a.assignment_id, "version": a.version, "trainable": list(a.trainable)},
    }


def _device_from_json(d: dict[str, Any]) -> DeviceRecord:
    record = DeviceRecord(
        device_id=d["device_id"],
        budget_bytes=d["budget_bytes"],
        online=d["online"],
        synced_version=d["synced_version"],
        excluded=d["excluded"],
    )
    if d["open"] is not None:
        # Only what validating the answer needs; the tensors went to the device long ago.
        record.open_assignment = Assignment(
            job="",
            device_id=d["device_id"],
            assignment_id=d["open"]["id"],
            version=d["open"]["version"],
            trainable=tuple(d["open"]["trainable"]),
            tensors={},
        )
    return record


class Journal:
    """Append-only, length-prefixed log of raw update payloads since the last checkpoint."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / JOURNAL
        self._file = self.path.open("ab")

    def append(self, topic: str, payload: bytes) -> None:
        """Persist one received update durably (returns after fsync)."""
        head = topic.encode()
        self._file.write(struct.pack("<II", len(head), len(payload)) + head + payload)
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
            topic = data[offset + 8 : offset + 8 + head_len].decode()
            yield topic, data[offset + 8 + head_len : end]
            offset = end

    def truncate(self) -> None:
        """Forget everything: a checkpoint now holds it."""
        self._file.truncate(0)
        self._file.seek(0)
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file."""
        self._file.close()
