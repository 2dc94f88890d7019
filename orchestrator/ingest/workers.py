"""``[ingest]`` in job.toml, and the worker processes the orchestrator starts for it."""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from broker.generate import ingest_credentials_path
from ftte.config import load_section, read_toml
from ftte.fileio import atomic_write
from ftte.ids import validate_id
from ftte.transport.mqtt import BrokerSettings
from ftte.wire import WireLimits
from orchestrator.ingest.worker import WorkerSpec

READY_TIMEOUT_S = 60.0  # a worker connects (TLS) and subscribes in about a second
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class IngestSettings:
    """How updates are decoded: by the orchestrator itself, or by worker processes."""

    # Worker processes sharing the update subscription; 0: the orchestrator decodes every
    # update itself. Each needs a broker account: `[fleet] ingest_workers` in fleet.toml.
    workers: int = 0
    # The folder ``ftte broker init`` wrote (ingest-1.toml, …), relative to job.toml.
    accounts: Path = Path("broker-files")
    share_group: str = "ingest"  # the MQTT v5 shared subscription's group name

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError("ingest.workers must be >= 0 (0: the orchestrator decodes updates)")
        validate_id(self.share_group, "ingest.share_group")


def worker_account(settings: IngestSettings, index: int) -> BrokerSettings:
    """Worker ``index``'s (1-based) broker account, or a ValueError that says how to make it."""
    path = ingest_credentials_path(settings.accounts, index)
    if not path.is_file():
        raise ValueError(
            f"ingest.workers = {settings.workers} needs {path}: set `ingest_workers = "
            f"{settings.workers}` (or more) under [fleet] in fleet.toml and re-run "
            "`ftte broker init`, or point ingest.accounts at the folder it wrote"
        )
    broker = read_toml(path).get("broker")
    account = load_section(BrokerSettings, broker, str(path), "broker")
    ca_file = account.ca_file if account.ca_file.is_absolute() else path.parent / account.ca_file
    return BrokerSettings(
        account.host, account.port, account.username, account.password, ca_file.resolve()
    )


class IngestWorkers:
    """The worker processes of one orchestrator: started before it serves, stopped after."""

    def __init__(
        self,
        settings: IngestSettings,
        fleet: str,
        shapes: dict[str, tuple[int, ...]],
        buffer_shapes: dict[str, tuple[int, ...]],
        folder: Path,
        limits: WireLimits,
    ) -> None:
        self.settings = settings
        self.folder = folder
        self.specs = [
            WorkerSpec(
                worker_account(settings, k),
                fleet,
                settings.share_group,
                shapes,
                buffer_shapes,
                limits,
                folder / f"worker-{k}.stats.json",
            )
            for k in range(1, settings.workers + 1)
        ]
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        """Start every worker and wait until each has its subscription in place."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for k, spec in enumerate(self.specs, 1):
            spec.stats.unlink(missing_ok=True)
            path = self.folder / f"worker-{k}.json"
            atomic_write(path, json.dumps(spec.to_json()).encode(), 0o600)  # holds a password
            log = (self.folder / f"worker-{k}.log").open("ab")
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "orchestrator.ingest.worker", str(path)],
                    stdout=subprocess.PIPE,
                    stderr=log,
                )
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        for k, process in enumerate(self.processes, 1):
            assert process.stdout is not None
            if not _ready(process.stdout, deadline):
                self.stop()
                raise RuntimeError(
                    f"ingest worker {k} did not subscribe in {READY_TIMEOUT_S:.0f} s; "
                    f"see {self.folder / f'worker-{k}.log'}"
                )

    def pids(self) -> list[int]:
        """The workers' process ids."""
        return [p.pid for p in self.processes]

    def stop(self) -> list[dict[str, Any]]:
        """Stop every worker (SIGTERM, then SIGKILL); return the counts each wrote."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        self.processes = []
        return [json.loads(spec.stats.read_text()) for spec in self.specs if spec.stats.is_file()]


def _ready(stdout: IO[bytes], deadline: float) -> bool:
    """Whether the worker printed ``ready`` before ``deadline``."""
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if selector.select(left):
                return stdout.readline().strip() == b"ready"
    return False
