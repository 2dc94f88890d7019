"""Helpers for fleet tests: a local fleet with the orchestrator in a thread or a process."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from orchestrator.config import JobConfig
from orchestrator.localfleet import LocalFleet, LocalFleetSpec
from orchestrator.service import JobResult, OrchestratorService


class ServiceThread:
    """The orchestrator service running in a background thread of the test process."""

    def __init__(self, fleet: LocalFleet | JobConfig) -> None:
        config = fleet if isinstance(fleet, JobConfig) else fleet.job_config()
        self.service = OrchestratorService(config)
        self.stop = threading.Event()
        self.result: JobResult | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.result = self.service.run(self.stop)

    def wait(self, timeout: float) -> JobResult:
        self.thread.join(timeout)
        if self.result is None:
            self.stop.set()
            self.thread.join(30)
            raise TimeoutError(f"job did not finish in {timeout} s")
        return self.result


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(0.2)


# A target no validation accuracy reaches: jobs in tests about resuming stop on max_versions.
UNREACHABLE = 1.01


def spec(tmp_path: Path, **overrides) -> LocalFleetSpec:
    base = LocalFleetSpec(run_dir=tmp_path / "fleet", devices=8, max_wall_s=240.0)
    return replace(base, **overrides)


def start_orchestrator_process(job_file: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ftte.cli", "orchestrator", "--config", str(job_file)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
