"""``[ingest]`` in job.toml, and the worker processes the orchestrator starts for it."""

from __future__ import annotations

import json
import logging
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

log = logging.getLogger("ftte.ingest")

READY_TIMEOUT_S = 60.0  # a worker connects (TLS) and subscribes in about a second
STOP_TIMEOUT_S = 10.0
# A worker that died is started again after a pause that doubles with each death in a row
# (a worker that cannot start at all, a revoked account say, costs one try a minute), and
# falls back to the first once a worker has served this long.
RESTART_FIRST_S = 1.0
RESTART_MAX_S = 60.0
STEADY_S = 60.0


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
        self.restarts = [0] * settings.workers  # per worker, since the orchestrator started
        self._started_at = [0.0] * settings.workers
        self._pause = [RESTART_FIRST_S] * settings.workers
        self._waiting: set[int] = set()  # restarted, not yet subscribed

    def start(self) -> None:
        """Start every worker and wait until each has its subscription in place."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for k, spec in enumerate(self.specs, 1):
            spec.stats.unlink(missing_ok=True)
            # The spec holds the worker's password: readable by the orchestrator's user only.
            atomic_write(self._spec_path(k), json.dumps(spec.to_json()).encode(), 0o600)
        self.processes = [self._spawn(i) for i in range(len(self.specs))]
        deadline = time.monotonic() + READY_TIMEOUT_S
        for k, process in enumerate(self.processes, 1):
            if not _ready(process.stdout, deadline):
                self.stop()
                raise RuntimeError(
                    f"ingest worker {k} did not subscribe in {READY_TIMEOUT_S:.0f} s; "
                    f"see {self._log_path(k)}"
                )

    def supervise(self) -> None:
        """Start again, after a pause, a worker that died; note one that came back.

        Called from the orchestrator's loop, it never blocks: while a worker is away the
        broker hands the whole shared subscription to the others, and what the dead one had
        taken but not handed off is resent from the devices' outboxes (they resend until
        the owner's journal acknowledges).
        """
        now = time.monotonic()
        for i, process in enumerate(self.processes):
            k = i + 1
            if process.poll() is None:
                if i in self._waiting and _ready(process.stdout, now):
                    self._waiting.discard(i)
                    log.info("ingest worker %d is back (restart %d)", k, self.restarts[i])
                elif now - self._started_at[i] > STEADY_S:
                    self._pause[i] = RESTART_FIRST_S
                continue
            if now - self._started_at[i] < self._pause[i]:
                continue
            log.warning(
                "ingest worker %d exited with %s; starting it again (see %s)",
                k,
                process.returncode,
                self._log_path(k),
            )
            if process.stdout is not None:
                process.stdout.close()
            self.restarts[i] += 1
            self._pause[i] = min(RESTART_MAX_S, 2 * self._pause[i])
            self.processes[i] = self._spawn(i)
            self._waiting.add(i)

    def alive(self) -> int:
        """Workers running and subscribed."""
        return sum(
            p.poll() is None and i not in self._waiting for i, p in enumerate(self.processes)
        )

    def _spawn(self, i: int) -> subprocess.Popen[bytes]:
        """Start worker ``i`` (0-based) on its spec file, its stderr appended to its log."""
        k = i + 1
        self._started_at[i] = time.monotonic()
        with self._log_path(k).open("ab") as stderr:
            return subprocess.Popen(
                [sys.executable, "-m", "orchestrator.ingest.worker", str(self._spec_path(k))],
                stdout=subprocess.PIPE,
                stderr=stderr,
            )

    def _spec_path(self, k: int) -> Path:
        return self.folder / f"worker-{k}.json"

    def _log_path(self, k: int) -> Path:
        return self.folder / f"worker-{k}.log"

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


def _ready(stdout: IO[bytes] | None, deadline: float) -> bool:
    """Whether the worker printed ``ready`` before ``deadline`` (now: without waiting)."""
    assert stdout is not None  # every worker is started with its stdout piped to us
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        if selector.select(max(0.0, deadline - time.monotonic())):
            return stdout.readline().strip() == b"ready"
    return False
