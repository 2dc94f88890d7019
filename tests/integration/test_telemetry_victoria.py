"""Telemetry through influxdb-client into a real VictoriaMetrics, and through an outage."""

import itertools
import time
from dataclasses import replace

from orchestrator.telemetry import InfluxConfig, TelemetryCounters, open_telemetry


def config(vm) -> InfluxConfig:
    return InfluxConfig(
        url=vm.url, token="t", org="ftte", bucket="ftte", flush_interval_ms=200, close_wait_ms=3000
    )


def write_some(telemetry) -> None:
    telemetry.device_status(device="dev-01", online=True, budget_bytes=400_000)
    telemetry.update(
        device="dev-01",
        update_id="u1",
        age=2,
        weight=0.5,
        bytes_=900,
        loss=0.7,
        accepted=True,
        reason=None,
        peak_mem_bytes=300_000,
    )
    telemetry.update(
        device="dev-02",
        update_id="u2",
        age=0,
        weight=None,
        bytes_=10,
        loss=float("nan"),
        accepted=False,
        reason="malformed",
        peak_mem_bytes=0,
    )
    telemetry.aggregation(
        version=7,
        buffer_fill=0,
        num_updates=5,
        clipped=1,
        capped=0,
        merged=0,
        screened=0,
        validation={"accuracy": 0.81, "loss": 0.6},
        wall_time_s=0.01,
    )


def test_points_are_readable_back_from_victoria_metrics(victoria, tmp_path):
    telemetry = open_telemetry("farm-a", "job-1", config(victoria), tmp_path)
    write_some(telemetry)
    telemetry.close()
    assert telemetry.counters().written == telemetry.counters().emitted == 4
    acc = victoria.export('{__name__="ftte_aggregation_val_accuracy"}')
    assert acc[0]["values"] == [0.81]
    assert acc[0]["metric"]["fleet"] == "farm-a" and acc[0]["metric"]["job"] == "job-1"
    series = victoria.export('{__name__="ftte_update_age"}', min_series=2)
    ages = {s["metric"]["device"]: s["values"] for s in series}
    assert ages == {"dev-01": [2], "dev-02": [0]}
    refused = victoria.export('{__name__="ftte_update_accepted",reason="malformed"}')
    assert refused[0]["values"] == [0]


def emit_updates(telemetry, count: int) -> None:
    for i in range(count):
        telemetry.update(
            device="dev-01",
            update_id=f"u{i}",
            age=0,
            weight=1.0,
            bytes_=1,
            loss=0.1,
            accepted=True,
            reason=None,
            peak_mem_bytes=1,
        )


def one_ms_apart():
    """A clock for points that must stay distinct samples at VictoriaMetrics' ms precision.

    It starts in the past so that no point is later than the export's default end, now.
    """
    start_ms = time.time_ns() // 10**6 - 60_000
    return itertools.count(start_ms * 10**6, 10**6).__next__


def test_a_hung_database_holds_up_no_caller_and_gets_every_point_once_it_answers(
    victoria, tmp_path
):
    victoria.pause()
    influx = replace(config(victoria), timeout_ms=60_000, close_wait_ms=60_000)
    telemetry = open_telemetry("farm-a", "job-1", influx, tmp_path, now_ns=one_ms_apart())
    emit_updates(telemetry, 1000)
    # Every call has returned, and the database has not answered a single write.
    assert telemetry.counters() == TelemetryCounters(emitted=1000)
    victoria.resume()
    telemetry.close()
    assert telemetry.counters() == TelemetryCounters(emitted=1000, written=1000)
    series = victoria.export('{__name__="ftte_update_bytes"}')
    assert len(series[0]["values"]) == 1000


def test_an_outage_loses_points_and_counts_every_one(victoria, tmp_path):
    victoria.stop()
    # No retries: a refused batch fails at once, so closing leaves no batch unaccounted.
    influx = replace(config(victoria), max_retries=0, close_wait_ms=30_000)
    telemetry = open_telemetry("farm-a", "job-1", influx, tmp_path)
    emit_updates(telemetry, 1000)
    telemetry.close()
    assert telemetry.counters() == TelemetryCounters(emitted=1000, failed=1000)


def test_without_influx_points_go_to_a_line_protocol_file(tmp_path):
    telemetry = open_telemetry("farm-a", "job-1", None, tmp_path)
    write_some(telemetry)
    telemetry.close()
    lines = (tmp_path / "telemetry.lp").read_text().splitlines()
    assert len(lines) == 4
    assert lines[1].startswith("ftte_update,device=dev-01,fleet=farm-a,job=job-1,reason=accepted ")
