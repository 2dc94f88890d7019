#!/usr/bin/env bash
# Benchmark: the pump anomaly detector on a real local fleet — Mosquitto, the orchestrator
# and three agent processes on this machine — with no central validation set, then
# `ftte-agent predict` on each device's test log with injected faults (never trained on).
# Writes the job's fleet measure and the test AUC, per-device flags included, as JSON.
#
#   bash examples/pump/local_fleet.sh docs/bench-objectives-fleet.json
OUT=$(realpath "${1:?usage: local_fleet.sh OUT.json}")
EXAMPLE=pump
source "$(dirname "$0")/../local_fleet.sh"
python make_logs.py --out logs --devices 3 --seconds 120
python make_logs.py --out test --devices 3 --seconds 30 --anomalies 0.1 --seed 1
fleet_toml pumps pump_task:MODEL
for d in 0 1 2; do cat >> fleet.toml <<EOT

[[devices]]
id = "pump-$d"
memory_budget_bytes = 200000000
[devices.sensors]
path = "$PWD/logs/pump-$d"
window = 64
channels = ["accel"]
timestamp = "time"
EOT
done
start_fleet pump 3
# target = 0: an MSE no model reaches, so the job runs its 150 versions.
cat > job.toml <<EOT
[job]
name = "pump-1"
fleet = "pumps"
run_dir = "run"
task = "pump_task:task"
num_partitions = 3
target = 0.0
target_on = "fleet"
fleet_min_devices = 3
max_versions = 150
max_wall_s = 900

[train]
epochs = 2
lr = 0.05
momentum = 0.9

[strategy]
buffer_size = 3
EOT
run_job
for d in 0 1 2; do
  ftte-agent --config broker-files/devices/pump-$d.toml predict --input test/pump-$d/vibration.csv \
    > predictions-$d.jsonl
done
python - "$OUT" "$JOB_WALL_S" <<'PY'
import json
import sys
from pathlib import Path

import numpy as np

import pump_task
from ftte.tasks.objectives import roc_auc

scores, labels, flags = [], [], []
for d in range(3):
    test = pump_task.windows(Path(f"test/pump-{d}"), label="anomaly")
    answers = [json.loads(line) for line in Path(f"predictions-{d}.jsonl").read_text().splitlines()]
    assert len(answers) == len(test)
    scores += [a["score"] for a in answers]
    flags += [a["anomaly"] for a in answers]
    labels += test.y.tolist()
s, y, f = np.array(scores), np.array(labels), np.array(flags)
index = json.loads(Path("run/releases/index.json").read_text())
status = json.loads(Path("status.json").read_text())
result = {
    "command": "bash examples/pump/local_fleet.sh OUT.json",
    "devices": 3,
    "job_wall_s": int(sys.argv[2]),
    "versions": status["version"],
    "updates_accepted": status["accepted"],
    "fleet_measure_final": status["fleet"],
    "best_release": {"version": index["best"]["version"], "metrics": index["best"]["metrics"]},
    "test_windows": len(y),
    "test_faulty_windows": int(y.sum()),
    "test_auc": roc_auc(y, s),
    "faults_flagged_share": float(f[y == 1].mean()),
    "normal_flagged_share": float(f[y == 0].mean()),
}
Path(sys.argv[1]).write_text(json.dumps(result, indent=1) + "\n")
print(json.dumps(result, indent=1))
PY
