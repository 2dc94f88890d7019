"""The releases a device keeps: the one it serves and the one before, durably.

The orchestrator publishes the job's best model as a retained ``release`` message
(``ftte.topics.release_topic``). The agent checks it like any message (bounded decoding, the
shapes of its own model, the model's name), then keeps the payload as it came — the bytes
whose SHA-256 names the release — in ``state_dir/releases/``: ``current.release`` and the
one it replaced as ``previous.release``, each written atomically. ``rollback`` swaps the two.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ftte.errors import Rejected, RejectReason
from ftte.fileio import atomic_write
from ftte.tasks.base import ModelSpec
from ftte.wire.codec import decode_release
from ftte.wire.messages import Release

CURRENT = "current.release"
PREVIOUS = "previous.release"


class DeviceReleases:
    """``state_dir/releases``: the release served now and the one before it."""

    def __init__(self, folder: Path, spec: ModelSpec) -> None:
        self.folder = folder
        self.spec = spec
        self._shapes = spec.tensor_shapes()

    def receive(self, payload: bytes) -> Release | None:
        """Keep a published release; ``None`` if it is the one served already. A release of
        another model, or one that does not decode, raises ``Rejected``."""
        release = decode_release(payload, expected_shapes=self._shapes)
        if release.model != self.spec.name:
            raise Rejected(
                RejectReason.WRONG_SLICE,
                f"release of model {release.model!r}, not {self.spec.name!r}",
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        current = self.folder / CURRENT
        if current.exists():
            held = current.read_bytes()
            if held == payload:
                return None
            atomic_write(self.folder / PREVIOUS, held)
        atomic_write(current, payload)
        return release

    def current(self) -> tuple[Release, str]:
        """The release served now and its SHA-256; FileNotFoundError if none arrived yet."""
        return self._load(CURRENT)

    def previous(self) -> tuple[Release, str]:
        """The release before the current one."""
        return self._load(PREVIOUS)

    def rollback(self) -> Release:
        """Serve the previous release again (the current one becomes the previous)."""
        current, previous = self.folder / CURRENT, self.folder / PREVIOUS
        if not previous.exists():
            raise FileNotFoundError(f"{previous}: no earlier release to go back to")
        now, before = current.read_bytes(), previous.read_bytes()
        atomic_write(current, before)
        atomic_write(previous, now)
        return self.current()[0]

    def _load(self, name: str) -> tuple[Release, str]:
        path = self.folder / name
        if not path.exists():
            raise FileNotFoundError(f"{path}: no release has arrived yet")
        payload = path.read_bytes()
        release = decode_release(payload, expected_shapes=self._shapes)
        return release, hashlib.sha256(payload).hexdigest()
