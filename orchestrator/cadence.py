"""How often the service does per-version work that is too slow for every version.

Evaluating the global model (~28 ms on digits) and writing a checkpoint (~13 ms) after
every aggregation capped live ingest at a few hundred updates per second (issue 14's
profile). Both now run on a version once ``every_versions`` versions or ``every_s``
seconds have passed since they last ran, whichever comes first; a job whose versions come
slower than that still has every version evaluated and checkpointed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Cadence:
    """Every N versions or T seconds, whichever comes first; remembers when it last ran."""

    every_versions: int
    every_s: float
    last_version: int
    last_time: float

    def due(self, version: int, now: float) -> bool:
        """Whether ``version`` (newer than the last run's) should have the work done now."""
        if version <= self.last_version:
            return False
        return (
            version - self.last_version >= self.every_versions
            or now - self.last_time >= self.every_s
        )

    def ran(self, version: int, now: float) -> None:
        """The work was done on ``version`` at ``now``."""
        self.last_version = version
        self.last_time = now
