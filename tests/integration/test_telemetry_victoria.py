"""Telemetry through influxdb-client into a real VictoriaMetrics, and through an outage."""

import time

from orchestrator.telemetry import InfluxConfig, open_telemetry


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
        version=7, buffer_fill=0, num_updates=5, val_accuracy=0.81, val_loss=0.6, wall_time_s=0.01
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


def test_an_outage_slows_nothing_and_is_counted(victoria, tmp_path):
    victoria.stop()
    telemetry = open_telemetry("farm-a", "job-1", config(victoria), tmp_path)
    started = time.perf_counter()
    for i in range(1000):
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
    assert time.perf_counter() - started < 0.5
    closing = time.perf_counter()
    telemetry.close()
    assert time.perf_counter() - closing < 10
    counters = telemetry.counters()
    assert counters.emitted == 1000 and counters.written == 0
    assert counters.failed > 0


def test_without_influx_points_go_to_a_line_protocol_file(tmp_path):
    telemetry = open_telemetry("farm-a", "job-1", None, tmp_path)
    write_some(telemetry)
    telemetry.close()
    lines = (tmp_path / "telemetry.lp").read_text().splitlines()
    assert len(lines) == 4
    assert lines[1].startswith("ftte_update,device=dev-01,fleet=farm-a,job=job-1,reason=accepted ")
