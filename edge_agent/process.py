"""What the agent's whole process holds in memory, read from ``/proc/self/status`` (Linux)."""

from __future__ import annotations

from pathlib import Path

from ftte.wire.messages import ProcessMemory

STATUS = Path("/proc/self/status")
# The agent's share of MemAvailable when no budget is configured: the sensing application
# keeps the rest. The simulator's device classes (``ftte.sim.fleet``) apply the same rule.
MEMORY_SHARE = 0.25


def process_memory(status: Path = STATUS) -> ProcessMemory:
    """Peak resident set (VmHWM) and resident anonymous memory (RssAnon), in bytes."""
    kib = {}
    for line in status.read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon"):
            kib[key] = int(value.split()[0])  # "12345 kB"
    return ProcessMemory(rss_peak_bytes=kib["VmHWM"] * 1024, rss_anon_bytes=kib["RssAnon"] * 1024)


def rss_bytes(status: Path = STATUS) -> int:
    """The resident set now (VmRSS), in bytes."""
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{status} has no VmRSS line")
