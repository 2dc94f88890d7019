"""The package layout: one namespace plus the design's top-level packages, layers pointing down."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DESIGN_PACKAGES = {"ftte", "orchestrator", "edge_agent", "broker"}


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT
    )
    return set(out.stdout.split())


def test_the_server_package_never_imports_the_simulator_benchmarks_or_cli():
    modules = imported_after(
        "import orchestrator.service, orchestrator.localfleet, orchestrator.demo, "
        "orchestrator.status, orchestrator.config"
    )
    assert "orchestrator.service" in modules
    upward = sorted(m for m in modules if m.startswith(("ftte.sim", "ftte.bench", "ftte.cli")))
    assert upward == []


def test_the_edge_agent_needs_neither_the_orchestrator_nor_influxdb():
    modules = imported_after("import edge_agent.agent")
    assert "edge_agent.agent" in modules
    assert not {m for m in modules if m.startswith(("orchestrator", "influxdb_client", "ftte.sim"))}


def test_the_cli_and_a_site_gateway_need_only_the_base_install():
    # A site gateway box and a device install ftte without the [server] extra.
    modules = imported_after(
        "from ftte.cli import build_parser; build_parser(); import orchestrator.gateway_service"
    )
    assert "orchestrator.gateway_service" in modules
    server_only = ("torch", "cryptography", "influxdb_client", "matplotlib", "onnx")
    assert not {m for m in modules if m.split(".")[0] in server_only}


@pytest.mark.slow
def test_the_wheel_installs_only_ftte_and_the_design_packages(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("ftte-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == DESIGN_PACKAGES
