"""Telemetry: points for updates, aggregations and device status, off the aggregation path.

One place builds the points (``PointTelemetry``); two sinks take them. ``InfluxTelemetry``
hands them to influxdb-client's batching writer, which sends from its own thread, so a
slow or unreachable database costs the orchestrator nothing but counted, lost points.
``FileTelemetry`` appends the same line protocol to ``telemetry.lp`` in the run folder when
no InfluxDB is configured. Tags are bounded (fleet, job, device, reason); counters, version
numbers and ids are fields, never tags.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from influxdb_client import InfluxDBClient, Point, WriteOptions
from influxdb_client.client.write_api import WriteType
from reactivex.scheduler import ThreadPoolScheduler

from ftte.wire.messages import ProcessMemory

log = logging.getLogger("ftte.telemetry")


@dataclass(frozen=True)
class InfluxConfig:
    """Where telemetry goes: an InfluxDB v2 write endpoint (or anything speaking it)."""

    url: str
    token: str
    org: str
    bucket: str
    batch_size: int = 500
    flush_interval_ms: int = 1000
    timeout_ms: int = 2000
    max_retries: int = 2
    close_wait_ms: int = 5000


@dataclass
class TelemetryCounters:
    """Fate of the points handed to a sink."""

    emitted: int = 0
    written: int = 0
    failed: int = 0  # given up on after retries (the database was down or refused them)
    retried: int = 0


class PointTelemetry(ABC):
    """Builds every telemetry point; subclasses decide where points go."""

    def __init__(self, fleet: str, job: str, now_ns: Callable[[], int] = time.time_ns) -> None:
        self.fleet = fleet
        self.job = job
        self.now_ns = now_ns
        self.stats = TelemetryCounters()
        self._lock = threading.Lock()

    def update(
        self,
        *,
        device: str,
        update_id: str,
        age: int,
        weight: float | None,
        bytes_: int,
        loss: float,
        accepted: bool,
        reason: str | None,
        peak_mem_bytes: int,
        process: ProcessMemory | None = None,
    ) -> None:
        """One received update, accepted or refused with its reason; ``process`` is what
        the agent's whole process held, when it reports that."""
        point = (
            self._point("ftte_update")
            .tag("device", device)
            .tag("reason", reason or "accepted")
            .field("accepted", int(accepted))
            .field("age", age)
            .field("bytes", bytes_)
            .field("peak_mem_bytes", peak_mem_bytes)
            .field("update_id", update_id)
        )
        if loss == loss:  # NaN loss (refused before decoding) is left out, not written
            point = point.field("loss", float(loss))
        if weight is not None:
            point = point.field("weight", float(weight))
        if process is not None:  # left out, not written as 0, for agents that do not report
            point = point.field("rss_peak_bytes", process.rss_peak_bytes)
            point = point.field("rss_anon_bytes", process.rss_anon_bytes)
        self._send(point)

    def aggregation(
        self,
        *,
        version: int,
        buffer_fill: int,
        num_updates: int,
        clipped: int,
        capped: int,
        merged: int,
        screened: int,
        validation: dict[str, float],
        wall_time_s: float,
    ) -> None:
        """One applied buffer: the new version, what the influence bound cut, and how good it
        is on the validation set if this version was evaluated (``val_{metric}`` fields; none
        without a validation set or between evaluations: the service evaluates every few
        versions or seconds)."""
        point = (
            self._point("ftte_aggregation")
            .field("version", version)
            .field("buffer_fill", buffer_fill)
            .field("num_updates", num_updates)
            .field("clipped", clipped)
            .field("capped", capped)
            .field("merged", merged)
            .field("screened", screened)
            .field("wall_time_s", float(wall_time_s))
        )
        for name, value in sorted(validation.items()):
            point = point.field(f"val_{name}", float(value))
        self._send(point)

    def fleet_evaluation(self, *, version: int, devices: int, metrics: dict[str, float]) -> None:
        """The fleet's own measure of a version: its devices' held-out data (``ftte_fleet``)."""
        point = self._point("ftte_fleet").field("version", version).field("devices", devices)
        for name, value in sorted(metrics.items()):
            point = point.field(name, float(value))
        self._send(point)

    def device_status(self, *, device: str, online: bool, budget_bytes: int | None) -> None:
        """A device came online (with its budget) or went away."""
        point = self._point("ftte_device").tag("device", device).field("online", int(online))
        if budget_bytes is not None:
            point = point.field("budget_bytes", budget_bytes)
        self._send(point)

    def device_excluded(self, *, device: str, reason: str) -> None:
        """The planner turned a device away (its budget cannot hold a useful slice)."""
        self._send(self._point("ftte_device").tag("device", device).field("excluded", reason))

    def counters(self) -> TelemetryCounters:
        """A snapshot of what happened to the points so far."""
        with self._lock:
            return TelemetryCounters(**vars(self.stats))

    @abstractmethod
    def close(self) -> None:
        """Flush what can be flushed within a bounded time."""

    @abstractmethod
    def _emit(self, point: Point) -> None: ...

    def _point(self, measurement: str) -> Point:
        return Point(measurement).tag("fleet", self.fleet).tag("job", self.job).time(self.now_ns())

    def _send(self, point: Point) -> None:
        with self._lock:
            self.stats.emitted += 1
        self._emit(point)

    def _count(self, **increments: int) -> None:
        with self._lock:
            for name, value in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + value)


FILE_FLUSH_S = 1.0  # the file sink writes what it holds at least this often


class FileTelemetry(PointTelemetry):
    """Line protocol appended to a file: telemetry without a database.

    Written in batches (a buffered file, flushed every ``FILE_FLUSH_S`` and on close), not
    a write per point: one point per update made the write call a per-update cost.
    """

    def __init__(self, fleet: str, job: str, path: Path, **kw: Any) -> None:
        super().__init__(fleet, job, **kw)
        self.path = path
        self._file = path.open("a")
        self._flushed = time.monotonic()

    def _emit(self, point: Point) -> None:
        self._file.write(point.to_line_protocol() + "\n")
        self._count(written=1)
        now = time.monotonic()
        if now - self._flushed >= FILE_FLUSH_S:
            self._file.flush()
            self._flushed = now

    def close(self) -> None:
        """Close the file."""
        self._file.close()


class InfluxTelemetry(PointTelemetry):
    """influxdb-client's batching writer; an outage is counted, never raised or waited on."""

    def __init__(self, fleet: str, job: str, config: InfluxConfig, **kw: Any) -> None:
        super().__init__(fleet, job, **kw)
        self.config = config
        # The library logs every failed batch at error level; we count them instead.
        logging.getLogger("influxdb_client.client.write_api").setLevel(logging.CRITICAL)
        self._client = InfluxDBClient(
            url=config.url, token=config.token, org=config.org, timeout=config.timeout_ms
        )
        options = WriteOptions(
            write_type=WriteType.batching,
            batch_size=config.batch_size,
            flush_interval=config.flush_interval_ms,
            retry_interval=500,
            max_retries=config.max_retries,
            max_retry_delay=2000,
            max_retry_time=config.close_wait_ms,
            max_close_wait=config.close_wait_ms,
            # The library's default scheduler is one instance shared by every WriteOptions.
            write_scheduler=ThreadPoolScheduler(max_workers=1),
        )
        self._write = self._client.write_api(
            write_options=options,
            success_callback=self._on_success,
            error_callback=self._on_error,
            retry_callback=self._on_retry,
        )

    def _emit(self, point: Point) -> None:
        self._write.write(bucket=self.config.bucket, org=self.config.org, record=point)

    def close(self) -> None:
        """Flush and stop the writer, waiting at most ``close_wait_ms``."""
        self._write.close()
        self._client.close()

    def _on_success(self, _conf: Any, data: str | bytes) -> None:
        self._count(written=_lines(data))

    def _on_error(self, _conf: Any, data: str | bytes, exc: Exception) -> None:
        # Counted, and said once per outage rather than once per batch.
        if self.counters().failed == 0:
            log.warning("telemetry points are being lost (InfluxDB unreachable?): %s", exc)
        self._count(failed=_lines(data))

    def _on_retry(self, _conf: Any, data: str | bytes, _exc: Exception) -> None:
        self._count(retried=_lines(data))


def _lines(data: str | bytes) -> int:
    text = data.decode() if isinstance(data, bytes) else data
    return sum(1 for line in text.splitlines() if line.strip())


def open_telemetry(
    fleet: str,
    job: str,
    influx: InfluxConfig | None,
    run_dir: Path,
    now_ns: Callable[[], int] = time.time_ns,
) -> PointTelemetry:
    """The InfluxDB sink if one is configured, else the line-protocol file in ``run_dir``."""
    if influx is None:
        return FileTelemetry(fleet, job, run_dir / "telemetry.lp", now_ns=now_ns)
    return InfluxTelemetry(fleet, job, influx, now_ns=now_ns)
