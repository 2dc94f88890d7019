"""docs/your-data.md, run as written: every ``sh`` block in order, in one shell.

A new user follows only that page; this runs it so the page cannot rot. The fleet is three
agent processes, Mosquitto and the orchestrator on this machine, as the page says.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from broker.launcher import free_port

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "your-data.md"

pytestmark = pytest.mark.fleet


def test_the_your_data_tutorial_runs_as_written(tmp_path):
    blocks = re.findall(r"^```sh\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)
    assert len(blocks) >= 11
    # Whatever happens, nothing the page started outlives the test.
    script = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n"
    script += "\n".join(blocks)
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "FTTE_REPO": str(REPO),
        "PORT": str(free_port()),
    }
    run = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    work = tmp_path / "motion"
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(work.glob("*.log")))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + logs
    # The job stopped on the fleet's own measure, and every device got the model.
    index = json.loads((work / "run" / "releases" / "index.json").read_text())
    best = index["best"]
    assert best["metrics"]["accuracy"] >= 0.9, best
    served = sorted((work / "agent-state").glob("*/releases/current.release"))
    assert len(served) == 3
    lines = (work / "predictions.jsonl").read_text().splitlines()
    predictions = [json.loads(line) for line in lines]
    assert len(predictions) >= 20 and all(len(p["scores"]) == 3 for p in predictions)
    assert (work / "motion.onnx").stat().st_size > 0
    assert "fleet evaluation of version" in run.stdout
    # The other objectives in the simulator, measured by the fleet (no validation set).
    forecast = json.loads((tmp_path / "forecast/sim-releases/index.json").read_text())
    assert forecast["metric"] == "mse" and {"mse", "mae"} <= forecast["best"]["metrics"].keys()
    pump = json.loads((tmp_path / "pump/sim-releases/index.json").read_text())
    assert pump["metric"] == "mse"
    assert json.loads((tmp_path / "pump/anomaly-test.json").read_text())["auc"] > 0.75
