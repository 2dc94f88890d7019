"""The shipped Grafana dashboard parses, has fixed uids and queries only what telemetry writes.

What telemetry writes is not listed here by hand: the real point builders write line
protocol to a file, and the measurements, tags and fields are read back from it.
"""

import json
import re
from pathlib import Path

import pytest
import yaml

from ftte.wire.messages import ProcessMemory
from orchestrator.telemetry import FileTelemetry

GRAFANA = Path(__file__).resolve().parents[2] / "docs" / "grafana"
DASHBOARD = json.loads((GRAFANA / "ftte-dashboard.json").read_text())
QUERIES = [t["query"] for p in DASHBOARD["panels"] for t in p["targets"]]


def written_schema(tmp_path) -> dict[str, tuple[set[str], set[str]]]:
    """Measurement -> (tags, fields) over every point kind, each with its optional parts."""
    telemetry = FileTelemetry("farm-a", "job-1", tmp_path / "t.lp")
    for weight, loss, reason in ((0.5, 0.7, None), (None, float("nan"), "malformed")):
        telemetry.update(
            device="dev-01",
            update_id="u1",
            age=1,
            weight=weight,
            bytes_=900,
            loss=loss,
            accepted=reason is None,
            reason=reason,
            peak_mem_bytes=300_000,
            process=ProcessMemory(rss_peak_bytes=60_000_000, rss_anon_bytes=30_000_000),
        )
    telemetry.aggregation(
        version=7,
        buffer_fill=0,
        num_updates=5,
        clipped=1,
        capped=0,
        merged=0,
        screened=0,
        validation={"accuracy": 0.8, "loss": 0.6},
        wall_time_s=0.1,
    )
    telemetry.fleet_evaluation(version=6, devices=3, metrics={"accuracy": 0.7, "loss": 0.9})
    telemetry.device_status(device="dev-01", online=True, budget_bytes=400_000)
    telemetry.device_status(device="dev-01", online=False, budget_bytes=None)
    telemetry.device_excluded(device="dev-02", reason="budget 9 B, cannot hold a slice")
    telemetry.close()
    schema: dict[str, tuple[set[str], set[str]]] = {}
    for line in (tmp_path / "t.lp").read_text().splitlines():
        # Tags hold no spaces here; string fields may (quoted), so split on the outer ones.
        series, rest = line.split(" ", 1)
        fields, _timestamp = rest.rsplit(" ", 1)
        measurement, *tags = series.split(",")
        known_tags, known_fields = schema.setdefault(measurement, (set(), set()))
        known_tags.update(t.split("=", 1)[0] for t in tags)
        known_fields.update(re.findall(r'(?:^|,)(\w+)=(?:"(?:[^"\\]|\\.)*"|[^,]*)', fields))
    return schema


def referenced(query: str) -> tuple[str, str, set[str]]:
    """The measurement, field and tags one dashboard query filters or groups on."""
    (measurement,) = re.findall(r'r\._measurement == "(\w+)"', query)
    (field,) = re.findall(r'r\._field == "(\w+)"', query)
    tags = set(re.findall(r"\br\.(\w+)", query)) - {"_measurement", "_field"}
    for columns in re.findall(r"group\(columns: \[([^\]]*)\]\)", query):
        tags.update(re.findall(r'"(\w+)"', columns))
    return measurement, field, tags


def test_dashboard_has_fixed_uids():
    assert DASHBOARD["uid"] == "ftte-fleet"
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"]["uid"] == "ftte-influx"


def test_the_schema_reader_sees_every_point_kind(tmp_path):
    schema = written_schema(tmp_path)
    assert set(schema) == {"ftte_update", "ftte_aggregation", "ftte_device", "ftte_fleet"}
    tags, fields = schema["ftte_update"]
    assert {"fleet", "job", "device", "reason"} <= tags
    assert {"weight", "loss", "accepted"} <= fields


@pytest.mark.parametrize("query", QUERIES, ids=[referenced(q)[1] for q in QUERIES])
def test_every_query_names_a_measurement_field_and_tags_telemetry_writes(query, tmp_path):
    schema = written_schema(tmp_path)
    measurement, field, tags = referenced(query)
    assert measurement in schema
    written_tags, written_fields = schema[measurement]
    assert field in written_fields
    assert tags <= written_tags


def test_provisioning_points_at_the_dashboard_datasource_uid():
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/ftte.yaml").read_text())
    assert ds["datasources"][0]["uid"] == "ftte-influx"
