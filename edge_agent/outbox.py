"""The agent's durable outbox: finished updates survive broker loss and agent restarts.

paho keeps QoS 1 state only in memory, so an update is written here (atomically) before it
is published and removed only when the orchestrator has acknowledged that it journaled it
(``edge_agent.delivery``): the broker's PUBACK is not enough. After a reconnect or a
restart everything still here is published again; a duplicate is harmless because the
orchestrator recognises it and never applies it twice.
"""

from __future__ import annotations

from pathlib import Path

from ftte.fileio import atomic_write


class Outbox:
    """A folder of encoded updates waiting for the orchestrator's acknowledgement."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def put(self, update_id: str, payload: bytes) -> Path:
        """Persist one encoded update (file and folder fsynced) and return its file."""
        final = self.folder / f"{update_id}.upd"
        atomic_write(final, payload)
        return final

    def pending(self) -> list[tuple[str, bytes]]:
        """Every update not yet acknowledged, oldest first."""
        files = sorted(self.folder.glob("*.upd"), key=lambda p: p.stat().st_mtime_ns)
        return [(p.stem, p.read_bytes()) for p in files]

    def done(self, update_id: str) -> None:
        """The orchestrator acknowledged this update: forget it."""
        (self.folder / f"{update_id}.upd").unlink(missing_ok=True)
