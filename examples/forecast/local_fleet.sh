#!/usr/bin/env bash
# Benchmark: the greenhouse forecaster on a real local fleet — Mosquitto, the orchestrator
# and five agent processes on this machine, each reading its own log through the task's
# loader — with no central validation set: devices hold out a fifth of their windows and
# the job keeps the best release by their measure. That release is then measured on the
# pooled held-out windows against the central model of docs/bench-objectives-central.json
# (same logs: 5 greenhouses, 20 days, seed 0; same windows held out). Writes JSON.
#
#   bash examples/forecast/local_fleet.sh docs/bench-objectives-fleet-forecast.json
OUT=$(realpath "${1:?usage: local_fleet.sh OUT.json}")
EXAMPLE=forecast
source "$(dirname "$0")/../local_fleet.sh"
python make_logs.py --out logs --devices 5 --days 20 --seed 0
fleet_toml greenhouses forecast_task:MODEL
for d in 0 1 2 3 4; do cat >> fleet.toml <<EOT

[[devices]]
id = "greenhouse-$d"
memory_budget_bytes = 200000000
loader = "forecast_task:windows"
loader_args = { path = "$PWD/logs/greenhouse-$d" }
holdout = 0.2
EOT
done
start_fleet greenhouse 5
# target = 0: an MSE no model reaches, so the job runs its 200 versions (600 updates, as
# the simulated run of examples/bench_objectives.py).
cat > job.toml <<EOT
[job]
name = "forecast-1"
fleet = "greenhouses"
run_dir = "run"
task = "forecast_task:task"
num_partitions = 5
target = 0.0
target_on = "fleet"
fleet_min_devices = 5
max_versions = 200
max_wall_s = 900

[train]
epochs = 2
lr = 0.01
momentum = 0.9

[strategy]
buffer_size = 3
EOT
run_job
python - "$OUT" "$JOB_WALL_S" "$FTTE_REPO/docs/bench-objectives-central.json" <<'PY'
import json
import sys
from pathlib import Path

import numpy as np

import forecast_task
from edge_agent.runtime import make_trainer
from ftte.tasks.base import Dataset, hold_out
from orchestrator.releases import ReleaseStore

objective = forecast_task.MODEL.objective
store = ReleaseStore.for_objective(Path("run/releases"), objective)
model = make_trainer(forecast_task.MODEL, "lean")
model.load(store.load(store.best).tensors)
held = [hold_out(forecast_task.windows(f"logs/greenhouse-{d}"), 0.2)[1] for d in range(5)]
pooled = Dataset(np.concatenate([h.x for h in held]), np.concatenate([h.y for h in held]))
federated = objective.metrics(model.logits(pooled.x), pooled)
central = json.loads(Path(sys.argv[3]).read_text())["examples"]["forecast"]
status = json.loads(Path("status.json").read_text())
result = {
    "command": "bash examples/forecast/local_fleet.sh OUT.json",
    "devices": 5,
    "job_wall_s": int(sys.argv[2]),
    "versions": status["version"],
    "updates_accepted": status["accepted"],
    "fleet_measure_final": status["fleet"],
    "best_release": {"version": store.best.version, "metrics": store.best.metrics},
    "held_out_windows": len(pooled),
    "federated_held_out": federated,
    "central_held_out": central["central_held_out"],
    "central_epochs": central["central_epochs"],
    "mse_over_central": federated["mse"] / central["central_held_out"]["mse"] - 1,
}
Path(sys.argv[1]).write_text(json.dumps(result, indent=1) + "\n")
print(json.dumps(result, indent=1))
PY
