"""Sensor logger files as training windows: CSV with a header, as loggers write them.

A logger writes rows (one per reading) with a header naming the columns, often a timestamp,
several channels and sometimes a label. ``SensorSource`` says which columns are channels,
which one is the label, and how rows become windows; ``read_windows`` turns a file, or a
folder of files, into samples of shape (channels, window) — the layout ``Conv1d`` takes.

Choices, documented in docs/your-data.md:

- A window never spans two files: a new file is where a logger restarted, so the rows on
  either side are not contiguous in time.
- A window's label is the label of its last row (the reading the window ends on), as for
  a detector that runs on the newest window.
- A folder is read newest file first (by modification time) until ``max_samples`` windows
  are taken, so a long-running logger's oldest files stop costing memory and time. Files
  are re-read when their size or modification time changed, so rows a logger appends are
  in the next read; unchanged files come from a cache.
- Non-numeric columns (timestamps such as ``2026-11-27T01:02:03Z``) are never parsed:
  only the channel and label columns are, so any timestamp format is fine.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ftte.tasks.base import Dataset

UNLABELLED = -1  # the label of every window when the source has no label column


@dataclass(frozen=True)
class SensorSource:
    """How a device's logger files become windows (``[data.sensors]`` in ``agent.toml``).

    ``channels`` names the columns to train on, in order (empty: every column but the
    timestamp and the label); ``window`` rows make one sample, and a new sample starts
    every ``stride`` rows.
    """

    path: Path  # a .csv file, or a folder of them
    window: int
    stride: int = 0  # 0: the window length (windows do not overlap)
    channels: list[str] = field(default_factory=list)
    timestamp: str = ""  # a column that is not a channel ("" when there is none)
    label: str = ""  # the label column ("" when the data is unlabelled)
    max_samples: int = 10_000  # newest windows kept; bounds memory and time per read

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("window must be at least 1 row")
        if self.stride < 0:
            raise ValueError("stride must be >= 0 rows (0: the window length)")
        if self.max_samples < 1:
            raise ValueError("max_samples must be at least 1")
        named = [c for c in (self.timestamp, self.label) if c]
        if set(named) & set(self.channels):
            raise ValueError("a column cannot be both a channel and the timestamp or label")

    @property
    def step(self) -> int:
        """Rows between the starts of two windows."""
        return self.stride or self.window


class SensorReader:
    """Reads a ``SensorSource`` again and again, parsing only files that changed."""

    def __init__(self, source: SensorSource) -> None:
        self.source = source
        self._cache: dict[Path, tuple[tuple[int, int], Dataset]] = {}

    def read(self) -> Dataset:
        """The newest ``max_samples`` windows, oldest first; raises ValueError naming the
        file and the fix when a file does not fit the source."""
        source = self.source
        files = _files(source.path)
        parts: list[Dataset] = []
        taken = 0
        for path in files:  # newest first
            stat = path.stat()
            key = (stat.st_mtime_ns, stat.st_size)
            cached = self._cache.get(path)
            windows = cached[1] if cached and cached[0] == key else read_windows(path, source)
            self._cache[path] = (key, windows)
            keep = min(len(windows), source.max_samples - taken)
            if keep:
                parts.append(Dataset(windows.x[-keep:], windows.y[-keep:]))
                taken += keep
            if taken >= source.max_samples:
                break
        for gone in self._cache.keys() - set(files):
            del self._cache[gone]
        if not taken:
            raise ValueError(
                f"data.sensors.path {source.path}: no complete window of {source.window} rows "
                "yet; wait for the logger or lower data.sensors.window"
            )
        parts.reverse()  # oldest first, as the rows were written
        return Dataset(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))


def read_windows(path: Path, source: SensorSource) -> Dataset:
    """Every window of one CSV file: x float32 (n, channels, window), y int64 (n,).

    A last line without its newline is one the logger is still writing: it waits for the
    next read.
    """
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    header = next(csv.reader(lines[:1]), None)
    if not header:
        raise ValueError(f"{path}: empty file; a CSV with a header row is expected")
    header = [name.strip() for name in header]
    columns = {name: i for i, name in enumerate(header)}
    for role, name in (("timestamp", source.timestamp), ("label", source.label)):
        if name and name not in columns:
            raise ValueError(
                f"{path}: no column {name!r} for data.sensors.{role}; the header has {header}"
            )
    channels = source.channels or [
        name for name in header if name not in (source.timestamp, source.label)
    ]
    missing = [name for name in channels if name not in columns]
    if missing:
        raise ValueError(
            f"{path}: no column {missing[0]!r} of data.sensors.channels; the header has {header}"
        )
    wanted = [columns[name] for name in channels] + (
        [columns[source.label]] if source.label else []
    )
    if len(lines) < 2:  # a header and no rows yet
        return _no_windows(len(channels), source.window)
    try:
        rows = np.loadtxt(lines[1:], delimiter=",", usecols=wanted, dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise ValueError(
            f"{path}: a channel or label value is not a number ({exc}); name non-numeric "
            "columns in data.sensors.timestamp or leave them out of data.sensors.channels"
        ) from None
    values = rows[:, : len(channels)]
    if not np.isfinite(values).all():
        raise ValueError(f"{path}: a channel value is NaN or infinite")
    starts = np.arange(0, len(rows) - source.window + 1, source.step)
    if not len(starts):
        return _no_windows(len(channels), source.window)
    index = starts[:, None] + np.arange(source.window)[None, :]  # (n, window)
    x = values[index].transpose(0, 2, 1).astype(np.float32)  # (n, channels, window)
    if source.label:
        labels = rows[starts + source.window - 1, -1]
        if not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
            raise ValueError(f"{path}: label column {source.label!r} must hold whole numbers")
        y = labels.astype(np.int64)
    else:
        y = np.full(len(starts), UNLABELLED, np.int64)
    return Dataset(np.ascontiguousarray(x), y)


def _no_windows(channels: int, window: int) -> Dataset:
    return Dataset(np.empty((0, channels, window), np.float32), np.empty(0, np.int64))


def _files(path: Path) -> list[Path]:
    """The CSV files of a source, newest first."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValueError(
            f"data.sensors.path {path} does not exist; point it at the logger's file or folder"
        )
    files = [p for p in path.iterdir() if p.suffix == ".csv" and p.is_file()]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)
