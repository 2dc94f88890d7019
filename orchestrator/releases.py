"""Releases: the job's trained models kept as versioned, hashed artifacts.

Each artifact is the wire codec's ``release`` message (``ftte.wire``: the values of every
tensor of the model, its metrics, job, version and architecture name), stored under
``run_dir/releases/`` as ``v{version}.release`` and named in ``index.json`` by its SHA-256.
The store keeps the best version by the job's metric (the task objective's primary metric,
in its direction: ``for_objective``) and the last one offered, plus the ``keep`` newest
others; everything else is deleted as it falls out.

Without a validation set a release's metrics are the fleet's measure (``orchestrator.
evaluation``): each device's newest report, over whichever devices reported on recent
versions. Those are not the same devices from one release to the next (a straggler reports
rarely), so two releases are compared on the devices both were measured by, each device
weighted by its samples in the newer measure; only with no device in common (or no
per-device reports: a validation set's metrics) are their overall values compared. A fast
subset's measure then cannot make an older version look better than a newer one that the
same devices measured as better (docs/architecture.md, releases).

The index is written after the artifact, both atomically, so a crash leaves either the old
index (and a stray file the next offer removes) or the new one, never an index naming a
file that is not there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ftte.fileio import atomic_write
from ftte.tasks.objectives import Objective
from ftte.wire.codec import decode_release, encode_release
from ftte.wire.limits import WireLimits
from ftte.wire.messages import Release

INDEX = "index.json"


@dataclass(frozen=True)
class StoredRelease:
    """One artifact of the store: its file, content hash, version and metrics."""

    version: int
    file: str
    sha256: str
    metrics: dict[str, float]
    # The devices whose reports made the job's metric, each (samples, value); empty when
    # it is a validation set's.
    by_device: dict[str, tuple[int, float]] = field(default_factory=dict)


class ReleaseStore:
    """The releases of one run: best by ``metric`` (higher is better unless
    ``lower_is_better``), last, and the ``keep`` newest."""

    def __init__(
        self, folder: Path, metric: str, lower_is_better: bool = False, keep: int = 5
    ) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1 release")
        self.folder = folder
        self.metric = metric
        self.lower_is_better = lower_is_better
        self.keep = keep
        folder.mkdir(parents=True, exist_ok=True)
        self._index = self._read_index()

    @classmethod
    def for_objective(cls, folder: Path, objective: Objective, keep: int = 5) -> ReleaseStore:
        """A store whose best is by ``objective``'s primary metric, in its direction."""
        return cls(folder, objective.primary, not objective.higher_is_better, keep)

    @property
    def best(self) -> StoredRelease | None:
        """The best release so far by the job's metric."""
        return self._stored(self._index.get("best"))

    @property
    def last(self) -> StoredRelease | None:
        """The release offered last."""
        return self._stored(self._index.get("last"))

    def kept(self) -> list[StoredRelease]:
        """Every release on disk, oldest first."""
        return [s for s in map(self._stored, self._index.get("kept", [])) if s is not None]

    def keep_if_best(
        self, release: Release, by_device: Mapping[str, tuple[int, float]] | None = None
    ) -> StoredRelease | None:
        """Store ``release`` if it beats the best one; return it if so. ``by_device``: the
        devices whose reports made its metric, each (samples, value)."""
        best = self.best
        candidate = dict(by_device or {})
        if best is not None and not self._better(release.metrics[self.metric], candidate, best):
            return None
        return self.offer(release, by_device)

    def offer(
        self, release: Release, by_device: Mapping[str, tuple[int, float]] | None = None
    ) -> StoredRelease:
        """Store ``release`` as the last one (and the best, if it beats the best); return it."""
        if self.metric not in release.metrics:
            raise ValueError(f"release has no metric {self.metric!r}: {sorted(release.metrics)}")
        payload = encode_release(release)
        stored = StoredRelease(
            version=release.version,
            file=f"v{release.version}.release",
            sha256=hashlib.sha256(payload).hexdigest(),
            metrics=dict(release.metrics),
            by_device={d: (int(n), float(v)) for d, (n, v) in (by_device or {}).items()},
        )
        atomic_write(self.folder / stored.file, payload)
        best = self.best
        if best is None or self._better(stored.metrics[self.metric], stored.by_device, best):
            best = stored
        kept = [s for s in self.kept() if s.version != stored.version][-(self.keep - 1) :]
        kept = [*kept, stored] if self.keep > 1 else [stored]
        if best not in kept:
            kept.insert(0, best)
        self._index = {
            "metric": self.metric,
            "best": asdict(best),
            "last": asdict(stored),
            "kept": [asdict(s) for s in kept],
        }
        atomic_write(self.folder / INDEX, json.dumps(self._index, indent=1).encode())
        names = {s.file for s in kept} | {INDEX}
        for path in self.folder.iterdir():
            if path.name not in names and path.suffix == ".release":
                path.unlink()
        return stored

    def load(self, stored: StoredRelease, limits: WireLimits | None = None) -> Release:
        """Read a stored release back, checking its hash."""
        payload = (self.folder / stored.file).read_bytes()
        if hashlib.sha256(payload).hexdigest() != stored.sha256:
            raise ValueError(f"{self.folder / stored.file}: content does not match its hash")
        return decode_release(payload, limits)

    def _better(
        self, value: float, by_device: Mapping[str, tuple[int, float]], than: StoredRelease
    ) -> bool:
        """Whether a release measured ``value`` (``by_device``) beats ``than``: on the
        devices both were measured by, weighted by the newer samples, else overall."""
        other = than.metrics[self.metric]
        common = by_device.keys() & than.by_device.keys()
        if common:
            total = sum(by_device[d][0] for d in common)
            value = sum(by_device[d][0] * by_device[d][1] for d in common) / total
            other = sum(by_device[d][0] * than.by_device[d][1] for d in common) / total
        return value < other if self.lower_is_better else value > other

    def _read_index(self) -> dict[str, Any]:
        path = self.folder / INDEX
        if not path.exists():
            return {}
        index: dict[str, Any] = json.loads(path.read_text())
        return index

    @staticmethod
    def _stored(entry: dict[str, Any] | None) -> StoredRelease | None:
        if entry is None:
            return None
        by_device = {d: (int(n), float(v)) for d, (n, v) in entry.get("by_device", {}).items()}
        return StoredRelease(**(entry | {"by_device": by_device}))
