# Shared by the examples' local-fleet benchmarks (sourced, not run): copies the example
# named by $EXAMPLE into a scratch folder and gives its script the steps of a real local
# fleet — Mosquitto, one agent process per device and the orchestrator on this machine.
#
#   fleet_toml NAME MODEL      start fleet.toml; the caller appends its [[devices]]
#   start_fleet PREFIX N       broker init, the broker and agents PREFIX-0..N-1, as processes
#   run_job                    the job in job.toml (written by the caller), timed into $JOB_WALL_S,
#                              then `ftte status --json` into status.json
# Everything the script started is stopped, and the scratch folder removed, on exit.
set -euo pipefail
FTTE_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$FTTE_REPO/.venv/bin:$PATH"
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
cd "$WORK" && cp -r "$FTTE_REPO/examples/$EXAMPLE" . && cd "$EXAMPLE"
export PYTHONPATH="$PWD"
PORT=$(python -c "from broker.launcher import free_port; print(free_port())")

fleet_toml() {
  cat > fleet.toml <<EOT
[fleet]
name = "$1"
broker_host = "localhost"
broker_port = $PORT
task = "$2"
agent_state_dir = "$PWD/agent-state"
EOT
}

start_fleet() {
  ftte broker init --fleet fleet.toml --out broker-files > /dev/null
  ftte broker run --fleet fleet.toml --out broker-files --bind 127.0.0.1 > broker.log 2>&1 &
  for ((d = 0; d < $2; d++)); do
    ftte-agent --config "broker-files/devices/$1-$d.toml" > "agent-$d.log" 2>&1 &
  done
}

run_job() {
  sed 's|certs/ca.crt|broker-files/certs/ca.crt|' broker-files/orchestrator.toml >> job.toml
  local started
  started=$(date +%s)
  ftte orchestrator --config job.toml > orchestrator.log 2>&1
  JOB_WALL_S=$(($(date +%s) - started))
  ftte status --fleet fleet.toml --out broker-files --json > status.json
}
