"""The shipped Grafana dashboard parses, has fixed uids and queries only measurements we write."""

import json
import re
from pathlib import Path

import yaml

GRAFANA = Path(__file__).resolve().parents[2] / "docs" / "grafana"


def test_dashboard_has_fixed_uids_and_known_measurements():
    dash = json.loads((GRAFANA / "ftte-dashboard.json").read_text())
    assert dash["uid"] == "ftte-fleet"
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "ftte-influx"
        for target in panel["targets"]:
            names = re.findall(r'_measurement == "(\w+)"', target["query"])
            assert names and set(names) <= {"ftte_update", "ftte_aggregation", "ftte_device"}


def test_provisioning_points_at_the_dashboard_datasource_uid():
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/ftte.yaml").read_text())
    assert ds["datasources"][0]["uid"] == "ftte-influx"
