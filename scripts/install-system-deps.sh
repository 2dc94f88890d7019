#!/usr/bin/env bash
# Installs the Debian packages ftte's demo and tests run against (Debian 12, as root).
# Only what is missing is installed, so a second run is quick and offline.
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v victoria-metrics >/dev/null 2>&1 || need+=(victoria-metrics)
command -v ansible-playbook >/dev/null 2>&1 || need+=(ansible-core)
command -v ansible-lint >/dev/null 2>&1 || need+=(ansible-lint)
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || need+=(python3-venv)
# The Ansible deploy test builds the agent's venv with Debian's own Python, and Ansible's
# pip module needs setuptools there.
/usr/bin/python3 -c "import ensurepip, venv" >/dev/null 2>&1 || need+=(python3-venv)
/usr/bin/python3 -c "import pkg_resources" >/dev/null 2>&1 || need+=(python3-setuptools)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "ftte needs these Debian packages: ${need[*]}; run as root or: sudo apt-get install ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}"
# The Debian packages enable their own services; ftte starts its own instances on free ports.
for svc in mosquitto victoria-metrics; do
  systemctl disable --now "$svc" >/dev/null 2>&1 || true
done
