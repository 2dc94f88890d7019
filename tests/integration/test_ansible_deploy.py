"""The Ansible roles, run for real on this machine into a throw-away root.

Every host is reached with the local connection and installs under its own prefix with
``ftte_manage_system: false`` (no packages, users or services touched on this machine). The
edge agent's virtualenv is really built (ftte from the wheel built here, for the default
lean runtime: no torch), so the test also proves the agent runs from the agent-only
dependencies.

The managed-system branch (``ftte_manage_system: true``) is exercised as far as this
machine allows without containers:

- a ``--check`` run of the agents' play takes the branch: the apt task resolves its
  packages against this machine's cache and the group and user tasks plan the account
  (check mode changes nothing); the systemd task is reached, and it is the only one that
  fails. The gateway's play is not run managed: its apt task is the same module, and its
  systemd task would abort the playbook before the agents' play on this machine;
- the rollout gate (``ftte broker wait-online``, the per-batch health check) runs as the
  playbook runs it, against a real Mosquitto, passing once the agent from the virtualenv the
  role built is online and failing the batch while it is not;
- the unit file the role renders is checked by content and by ``systemd-analyze verify``.

What it cannot exercise: packages really installed, accounts really created, and anything
systemd does (``daemon-reload``, enabling and starting the units, the restart and reload
handlers): this machine's PID 1 is not systemd, so ``systemctl`` has no manager to talk to,
and changing the packages and accounts of a shared machine is not a test's business. Those
need a disposable systemd host (a VM or a systemd container).
"""

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from broker.fleet import load_fleet
from broker.generate import init_broker
from broker.launcher import free_port, start_dev_broker
from orchestrator.gateway_service import load_gateway_config

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
BIN = Path(sys.executable).parent
DEVICE = "pi-001"
SITE_HOST, SITE = "north-gw", "north"  # a pre-aggregating site gateway, no devices yet
# The whole agent's budget: the gate's agent trains on a partition of digits, so its
# baseline includes scikit-learn (about 130 MiB with the lean runtime, ftte bench device).
BUDGET = 268_435_456
OVERHEAD = 67_108_864  # edge_agent_memory_overhead_bytes default
UNBUILT = (".venv", ".git", "build", "*.egg-info", "__pycache__", ".*_cache", "docs", "tests")
BROKER_FILES = ("mosquitto.conf", "passwd", "acl", "certs/ca.crt", "certs/server.crt")
GATE = "Wait for the agent's retained online status on the broker"
SYSTEMD_TASK = "Enable and start the agent"

pytestmark = [
    pytest.mark.deploy,
    pytest.mark.skipif(
        shutil.which("ansible-playbook") is None, reason="ansible-core is installed by make test"
    ),
]


def _playbook(inventory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "false",
    }
    return subprocess.run(
        ["ansible-playbook", "-i", str(inventory), str(ANSIBLE / "site.yml"), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )


def _recap(run: subprocess.CompletedProcess[str]) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters per host of a successful run."""
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    return _counters(run)


def _outcomes(run: subprocess.CompletedProcess[str]) -> dict[tuple[str, str], set[str]]:
    """What the default callback printed per (host, task name without its role): ok,
    changed, skipping, fatal."""
    outcomes: dict[tuple[str, str], set[str]] = {}
    task = ""
    for line in run.stdout.splitlines():
        if line.startswith("TASK ["):
            task = line[len("TASK [") : line.rindex("]")].split(" : ", 1)[-1]
        elif found := re.match(r"(ok|changed|skipping|fatal): \[([^\]\s]+)", line):
            outcomes.setdefault((found.group(2), task), set()).add(found.group(1))
    return outcomes


def _counters(run: subprocess.CompletedProcess[str]) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters per host."""
    recap = run.stdout.split("PLAY RECAP", 1)[1]
    hosts = {}
    for line in recap.splitlines():
        if "ok=" not in line:
            continue
        host, _, counters = line.partition(":")
        hosts[host.strip()] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counters)}
    return hosts


JOB_TOML = """
[job]
name = "season-1"
fleet = "test-fleet"
run_dir = "run"

[broker]
host = "gateway"
port = 8883
username = "ftte-orchestrator"
password = "unused"
ca_file = "ca.crt"

[server]
assignment_timeout_s = 900.0

[influence]
clip_factor = 1.5
screen = true
"""


class Deployment:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = root / "broker-files"
        self.inventory = root / "inventory.yml"

    def prefix(self, host: str) -> Path:
        return self.root / "hosts" / host


TASK_PACKAGE = {
    "pyproject.toml": """
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "fieldtask"
version = "0.3.1"

[tool.setuptools]
py-modules = ["fieldtask"]
""",
    "fieldtask.py": """
from ftte.tasks.base import ModelSpec
from ftte.tasks.layers import Flatten, Linear

MODEL = ModelSpec("fieldtask", (Flatten(), Linear(12, 3)), (2, 6), 3)
""",
}


def _task_package_wheel(root: Path) -> Path:
    """A user's task package (a model spec only), built as the inventory's comment says."""
    source = root / "fieldtask"
    source.mkdir()
    for name, text in TASK_PACKAGE.items():
        (source / name).write_text(text.lstrip())
    out = root / "task-dist"
    subprocess.run(
        [BIN / "pip", "wheel", "-q", "--no-deps", "-w", out, source], check=True, timeout=300
    )
    (wheel,) = out.glob("fieldtask-0.3.1-*.whl")
    return wheel


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> tuple[Deployment, subprocess.CompletedProcess[str]]:
    d = Deployment(tmp_path_factory.mktemp("ansible"))
    # Build from a copy: pip builds in the source tree and would leave build/ in the checkout.
    source = d.root / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*UNBUILT))
    subprocess.run(
        [BIN / "pip", "wheel", "-q", "--no-deps", "-w", d.root / "dist", source],
        check=True,
        timeout=300,
    )
    task_wheel = _task_package_wheel(d.root)
    job = d.root / "job.toml"  # the job whose bounds the site gateway must share
    job.write_text(JOB_TOML)
    # The example inventory's fleet-wide settings, with this machine's overrides.
    example = yaml.safe_load((ANSIBLE / "inventories/example/group_vars/all.yml").read_text())
    inventory = {
        "all": {
            "vars": example
            | {
                "ansible_connection": "local",
                "ansible_python_interpreter": "/usr/bin/python3",
                "ftte_become": False,
                "ftte_manage_system": False,
                "ftte_prefix": str(d.root / "hosts") + "/{{ inventory_hostname }}",
                "ftte_wheel_dir": str(d.root / "dist"),
                "ftte_fleet_name": "test-fleet",
                "ftte_task": "digits",
                "ftte_task_wheels": [str(task_wheel)],
                "fleet_files_ftte_cli": str(BIN / "ftte"),
                "fleet_files_job": str(job),
                # This machine has no ftte-agent account; nobody proves ownership is applied.
                "edge_agent_user": "nobody",
                "edge_agent_group": "nogroup",
                "mosquitto_broker_group": "nogroup",
                # pip finds the CPU wheel through this machine's own pip configuration.
                "ftte_install_torch_index": "",
                "site_gateway_user": "nobody",
                "site_gateway_group": "nogroup",
            },
            "children": {
                "broker": {"hosts": {"gateway": None}},
                "site_gateways": {
                    "hosts": {SITE_HOST: {"ftte_site": SITE, "ftte_site_pre_aggregate": True}}
                },
                "edge_agents": {
                    "hosts": {
                        DEVICE: {
                            "ftte_memory_budget_bytes": BUDGET,
                            "ftte_compute_class": "pi-zero-2",
                            "ftte_data_path": "/var/lib/ftte-agent/windows.npz",
                        }
                    }
                },
            },
        }
    }
    d.inventory.write_text(yaml.safe_dump(inventory))
    return d, _playbook(d.inventory)


def test_first_run_deploys_every_host(deployment):
    _, run = deployment
    recap = _recap(run)
    assert set(recap) == {"gateway", SITE_HOST, DEVICE}
    assert all(c["failed"] == 0 and c["unreachable"] == 0 for c in recap.values())
    assert recap[DEVICE]["changed"] > 0


def test_fleet_file_comes_from_the_inventory(deployment):
    d, _ = deployment
    fleet = (d.files / "fleet.toml").read_text()
    assert 'name = "test-fleet"' in fleet and 'broker_host = "gateway"' in fleet
    assert f'id = "{DEVICE}"' in fleet and f"memory_budget_bytes = {BUDGET}" in fleet


def test_broker_files_are_byte_identical_to_broker_init(deployment):
    d, _ = deployment
    installed = d.prefix("gateway") / "etc/mosquitto/ftte"
    for name in (*BROKER_FILES, "certs/server.key"):
        assert (installed / name).read_bytes() == (d.files / name).read_bytes(), name
    for secret in ("passwd", "acl", "certs/server.key"):
        assert stat.S_IMODE((installed / secret).stat().st_mode) == 0o640, secret
    assert not (installed / "certs/ca.key").exists()  # the CA key never leaves the controller
    drop_in = d.prefix("gateway") / "etc/systemd/system/mosquitto.service.d/ftte.conf"
    assert "ExecStart=/usr/sbin/mosquitto -c /etc/mosquitto/ftte/mosquitto.conf" in (
        drop_in.read_text()
    )


def test_site_gateway_gets_its_broker_files_and_its_gateway_process(deployment):
    d, _ = deployment
    site_files = d.files / "sites" / SITE
    installed = d.prefix(SITE_HOST) / "etc/mosquitto/ftte-site"
    for name in (*BROKER_FILES, "certs/server.key"):
        assert (installed / name).read_bytes() == (site_files / name).read_bytes(), name
    # Its mosquitto.conf holds the bridge's password.
    for secret in ("mosquitto.conf", "passwd", "acl", "certs/server.key"):
        assert stat.S_IMODE((installed / secret).stat().st_mode) == 0o640, secret
    config = d.prefix(SITE_HOST) / "etc/ftte-gateway/gateway.toml"
    assert config.read_bytes() == (site_files / "gateway.toml").read_bytes()
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    gateway = load_gateway_config(config)  # with the job's bounds (fleet_files_job)
    assert gateway.gateway.assignment_timeout_s == 900.0
    assert (gateway.influence.clip_factor, gateway.influence.screen) == (1.5, True)
    unit = (d.prefix(SITE_HOST) / "etc/systemd/system/ftte-gateway.service").read_text()
    assert (
        "ExecStart=/opt/ftte-gateway/venv/bin/ftte gateway --config /etc/ftte-gateway/gateway.toml"
        in unit
    )
    venv = d.prefix(SITE_HOST) / "opt/ftte-gateway/venv/bin"
    run = subprocess.run(
        [venv / "ftte", "gateway", "--help"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0 and "--config" in run.stdout, run.stderr
    assert subprocess.run([venv / "python", "-c", "import torch"], check=False).returncode != 0
    fleet = load_fleet(d.files / "fleet.toml")
    assert [(s.name, s.host, s.pre_aggregate) for s in fleet.sites] == [(SITE, SITE_HOST, True)]


def test_agent_config_is_the_devices_own_and_private(deployment):
    d, _ = deployment
    config = d.prefix(DEVICE) / "etc/ftte-agent/agent.toml"
    assert config.read_bytes() == (d.files / "devices" / f"{DEVICE}.toml").read_bytes()
    info = config.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == _uid("nobody")
    ca = d.prefix(DEVICE) / "etc/ftte-agent/ca.crt"
    assert ca.read_bytes() == (d.files / "certs/ca.crt").read_bytes()


def test_unit_starts_the_agent_with_its_config_and_memory_limit(deployment):
    d, _ = deployment
    unit = (d.prefix(DEVICE) / "etc/systemd/system/ftte-agent.service").read_text()
    assert (
        "ExecStart=/opt/ftte-agent/venv/bin/ftte-agent --config /etc/ftte-agent/agent.toml" in unit
    )
    assert f"MemoryMax={BUDGET + OVERHEAD}\n" in unit
    assert "Restart=on-failure" in unit and "User=nobody" in unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_rendered_unit_passes_systemd_analyze_verify(deployment, tmp_path):
    d, _ = deployment
    unit = d.prefix(DEVICE) / "etc/systemd/system/ftte-agent.service"
    # verify checks that ExecStart exists: point it at the venv the role really built; and
    # it refuses "nobody", which stands in here for the account a real deploy creates.
    text = (
        unit.read_text()
        .replace("ExecStart=/opt/ftte-agent", f"ExecStart={d.prefix(DEVICE)}/opt/ftte-agent")
        .replace("User=nobody", "User=root")
        .replace("Group=nogroup", "Group=root")
    )
    copy = tmp_path / "ftte-agent.service"
    copy.write_text(text)
    run = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, check=False
    )
    problems = [line for line in run.stderr.splitlines() if "ftte-agent.service" in line]
    assert run.returncode == 0 and not problems, run.stderr


def test_installed_agent_runs_from_agent_only_dependencies(deployment):
    d, _ = deployment
    venv = d.prefix(DEVICE) / "opt/ftte-agent/venv/bin"
    run = subprocess.run(
        [venv / "ftte-agent", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0 and "--config" in run.stdout, run.stderr
    for not_for_the_lean_agent in ("influxdb_client", "torch"):
        absent = subprocess.run(
            [venv / "python", "-c", f"import {not_for_the_lean_agent}"], check=False
        )
        assert absent.returncode != 0, not_for_the_lean_agent
    config = tomllib.loads((d.prefix(DEVICE) / "etc/ftte-agent/agent.toml").read_text())
    assert config["agent"]["runtime"] == "lean"


def test_the_users_task_package_is_installed_beside_the_agent(deployment):
    d, _ = deployment
    python = d.prefix(DEVICE) / "opt/ftte-agent/venv/bin/python"
    probe = "from ftte.tasks import load_model_spec; print(load_model_spec('fieldtask:MODEL'))"
    run = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=False)
    assert run.returncode == 0 and "fieldtask" in run.stdout, run.stderr


def test_second_run_changes_nothing(deployment):
    d, _ = deployment
    recap = _recap(_playbook(d.inventory))
    assert {host: c["changed"] for host, c in recap.items()} == dict.fromkeys(recap, 0)


def test_check_diff_run_reports_no_change(deployment):
    d, _ = deployment
    run = _playbook(d.inventory, "--check", "--diff")
    recap = _recap(run)
    assert all(c["changed"] == 0 and c["failed"] == 0 for c in recap.values())


def test_rotating_a_device_redeploys_only_its_secret(deployment):
    d, _ = deployment
    subprocess.run(
        [
            BIN / "ftte",
            "broker",
            "rotate",
            "--fleet",
            d.files / "fleet.toml",
            "--out",
            d.files,
            "--device",
            DEVICE,
        ],
        check=True,
        capture_output=True,
    )
    run = _playbook(d.inventory, "--diff")
    recap = _recap(run)
    # The password file on the gateway and the agent's config change; nothing else does.
    assert recap["gateway"]["changed"] == 1 and recap[DEVICE]["changed"] == 1
    assert recap[SITE_HOST]["changed"] == 0  # a central device's secret is not the site's
    installed = d.prefix(DEVICE) / "etc/ftte-agent/agent.toml"
    assert installed.read_bytes() == (d.files / "devices" / f"{DEVICE}.toml").read_bytes()
    password = tomllib.loads(installed.read_text())["broker"]["password"]
    assert password not in run.stdout  # secrets never appear in --diff output


def test_managed_check_run_plans_packages_and_account_and_fails_only_at_systemd(deployment):
    d, _ = deployment
    managed = json.dumps({"ftte_manage_system": True})
    outcomes = _outcomes(_playbook(d.inventory, "--check", "--limit", DEVICE, "-e", managed))
    for task in (
        "Install the Debian packages for the virtualenv and the pip module",
        "Create the agent's group",
        "Create the agent's user",
    ):
        assert outcomes[(DEVICE, task)] <= {"ok", "changed"} and outcomes[(DEVICE, task)], task
    # Reached, so the managed branch is taken; on this machine it fails (no systemd).
    assert outcomes[(DEVICE, SYSTEMD_TASK)] - {"skipping"}
    assert {task for (_, task), seen in outcomes.items() if "fatal" in seen} <= {SYSTEMD_TASK}


@pytest.fixture
def gate_files(tmp_path) -> Iterator[Path]:
    """Broker files for a one-device fleet on 127.0.0.1, served by a real Mosquitto."""
    files = tmp_path / "gate-files"
    files.mkdir()
    port = free_port()
    (files / "fleet.toml").write_text(
        "\n".join(
            [
                "[fleet]",
                'name = "test-fleet"',
                'broker_host = "127.0.0.1"',
                f"broker_port = {port}",
                'task = "digits"',
                f'agent_state_dir = "{tmp_path / "agent-state"}"',
                "[[devices]]",
                f'id = "{DEVICE}"',
                f"memory_budget_bytes = {BUDGET}",
                "",
            ]
        )
    )
    fleet = load_fleet(files / "fleet.toml")
    init_broker(fleet, files)
    broker = start_dev_broker(fleet, files, port=port)
    try:
        yield files
    finally:
        broker.stop()


def _gate(d: Deployment, files: Path, timeout_s: int) -> subprocess.CompletedProcess[str]:
    """Only the rollout gate of the agents' play, managed, for the device, as -v shows it."""
    managed = {
        "ftte_manage_system": True,
        "ftte_broker_files": str(files),
        "edge_agent_health_timeout_s": timeout_s,
    }
    return _playbook(
        d.inventory, "-v", "--limit", DEVICE, "--start-at-task", GATE, "-e", json.dumps(managed)
    )


def test_rollout_gate_passes_once_the_deployed_agent_is_online(deployment, gate_files):
    d, _ = deployment
    agent = subprocess.Popen(
        [
            d.prefix(DEVICE) / "opt/ftte-agent/venv/bin/ftte-agent",
            "--config",
            gate_files / "devices" / f"{DEVICE}.toml",
        ],
        stdout=(gate_files / "agent.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        run = _gate(d, gate_files, timeout_s=120)
    finally:
        agent.terminate()
        agent.wait(30)
    recap = _recap(run)
    assert recap[DEVICE]["failed"] == 0
    assert f"{DEVICE} online, version 0.1.0" in run.stdout


def test_rollout_gate_fails_the_batch_while_the_device_is_not_online(deployment, gate_files):
    d, _ = deployment
    run = _gate(d, gate_files, timeout_s=3)
    assert run.returncode != 0
    assert _counters(run)[DEVICE]["failed"] == 1
    assert f"{DEVICE} not online with version 0.1.0" in run.stdout


def _uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid
