"""A whole fleet on this machine: generated broker, job file and agent processes.

The demo and the integration tests use it; everything it starts is the real thing (the
Mosquitto binary with the generated TLS/ACL config, ``ftte-agent`` processes, the
orchestrator service), only on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from broker.fleet import DeviceEntry, Fleet, FleetSection
from broker.generate import BrokerFiles, init_broker
from broker.launcher import RunningBroker, free_port, start_dev_broker
from ftte.config import dump_section, write_toml
from ftte.memory import MemoryModel
from ftte.tasks import load_model_spec, load_task
from ftte.training import TrainSettings
from ftte.transport.mqtt import BrokerSettings
from orchestrator.config import JobConfig, JobSection
from orchestrator.ingest.workers import IngestSettings
from orchestrator.server import ServerSettings
from orchestrator.status import load_broker_account
from orchestrator.telemetry import InfluxConfig


@dataclass(frozen=True)
class LocalFleetSpec:
    """What to run locally: task, fleet size, strategy and the spread of device kinds."""

    run_dir: Path
    task: str = "digits"
    devices: int = 20
    strategy: str = "ftte"
    seed: int = 0
    weakest_fraction: float = 0.15  # smallest budget, as a fraction of full-model training
    slow_fraction: float = 0.3  # devices slowed down to imitate weaker hardware
    max_slowdown: float = 4.0
    target_accuracy: float | None = None  # None: the task's own (a classification task)
    max_versions: int = 2000
    max_wall_s: float = 540.0
    train: TrainSettings = field(default_factory=TrainSettings)
    # A local fleet answers in seconds: give up on a silent agent after two minutes.
    server: ServerSettings = field(default_factory=lambda: ServerSettings(assignment_timeout_s=120))
    strategy_params: dict[str, Any] = field(default_factory=dict)  # the strategy's own defaults
    influx: InfluxConfig | None = None
    port: int = 0  # the broker's port on 127.0.0.1; 0: a free one
    # The devices' own data, one file each (.npz with x and y, or a labelled .csv, as
    # edge_agent reads it); empty: each device gets its partition of the task's data.
    data_files: tuple[Path, ...] = ()
    ingest_workers: int = 0  # worker processes decoding updates for the orchestrator

    def __post_init__(self) -> None:
        if self.data_files and len(self.data_files) != self.devices:
            raise ValueError(
                f"{len(self.data_files)} data files for {self.devices} devices: give one each"
            )
        missing = [str(f) for f in self.data_files if not f.is_file()]
        if missing:
            raise ValueError(f"data files not found: {', '.join(missing)}")


def device_budgets(spec: LocalFleetSpec) -> list[int]:
    """Budgets spread log-uniformly from ``weakest_fraction`` of full training to full.

    Full training is the memory model's peak under the fleet's own training settings, the
    peak the server's planner will compare slices against.
    """
    model = load_model_spec(spec.task)
    torch.manual_seed(spec.seed)
    memory = MemoryModel.profile(model.make_model(), model.input_shape)
    full = memory.full_model_peak(spec.train.batch_size, spec.train.optimizer_slots)
    fractions = np.geomspace(spec.weakest_fraction, 1.0, spec.devices)
    return [int(f * full) for f in np.random.default_rng(spec.seed).permutation(fractions)]


class LocalFleet:
    """Generates the fleet's files, runs the broker and spawns the agents."""

    def __init__(self, spec: LocalFleetSpec) -> None:
        self.spec = spec
        # Absolute: each agent resolves a relative path from its own config's folder.
        self.run_dir = spec.run_dir.resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(spec.seed)
        budgets = device_budgets(spec)
        slow = rng.random(spec.devices) < spec.slow_fraction
        slowdowns = np.where(slow, rng.uniform(2.0, spec.max_slowdown, spec.devices), 1.0)
        width = len(str(spec.devices - 1))
        ids = [f"dev-{i:0{width}d}" for i in range(spec.devices)]
        data_files = (
            dict(zip(ids, (f.resolve() for f in spec.data_files), strict=True))
            if spec.data_files
            else self._write_device_data(ids)
        )
        self.fleet = Fleet(
            FleetSection(
                name="local",
                broker_host="127.0.0.1",
                broker_port=spec.port or free_port(),
                bind_address="127.0.0.1",
                task=spec.task,
                agent_state_dir=self.run_dir / "agents",
                ingest_workers=spec.ingest_workers,
            ),
            [
                # Training budgets: fractions of a ~1 MB training peak, below what an agent
                # process's RSS varies by, so not derived from a whole-agent budget.
                DeviceEntry(
                    device_id,
                    0,
                    "demo",
                    data_files[device_id],
                    round(slow, 2),
                    training_budget_bytes=budget,
                )
                for device_id, budget, slow in zip(ids, budgets, slowdowns, strict=True)
            ],
        )
        self.files: BrokerFiles = init_broker(self.fleet, self.run_dir / "broker")
        self.broker: RunningBroker | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}

    def _write_device_data(self, device_ids: list[str]) -> dict[str, Path]:
        """Each device's partition of the task as its own data file, as a field device has.

        The orchestrator builds the same partitions from the same seed for nothing but
        validation; an agent reads only its file and never builds the task's dataset.
        """
        task = load_task(self.spec.task, num_devices=len(device_ids), seed=self.spec.seed)
        folder = self.run_dir / "data"
        folder.mkdir(exist_ok=True)
        files = {}
        for device_id, data in zip(device_ids, task.devices, strict=True):
            files[device_id] = folder / f"{device_id}.npz"
            np.savez(files[device_id], x=data.x, y=data.y)
        return files

    def job_config(self) -> JobConfig:
        """The orchestrator's job, wired to this fleet's broker and credentials."""
        s = self.spec
        with self.files.orchestrator_credentials.open("rb") as f:
            password = str(tomllib.load(f)["broker"]["password"])
        return JobConfig(
            job=JobSection(
                name="demo",
                fleet=self.fleet.fleet.name,
                run_dir=self.run_dir / "orchestrator",
                task=s.task,
                strategy=s.strategy,
                seed=s.seed,
                num_partitions=s.devices,
                target_accuracy=s.target_accuracy,
                max_versions=s.max_versions,
                max_wall_s=s.max_wall_s,
            ),
            broker=BrokerSettings(
                host="127.0.0.1",
                port=self.fleet.fleet.broker_port,
                username="ftte_orchestrator",
                password=password,
                ca_file=self.files.ca_cert,
            ),
            train=s.train,
            server=s.server,
            strategy=s.strategy_params,
            influx=s.influx,
            ingest=IngestSettings(workers=s.ingest_workers, accounts=self.files.out_dir),
        )

    def operator_account(self) -> BrokerSettings:
        """The read-only operator account (``ftte status``) on this fleet's broker."""
        return load_broker_account(self.files.operator_credentials)

    def write_job_file(self) -> Path:
        """The job as a TOML file, for ``ftte orchestrator --config``."""
        path = self.run_dir / "job.toml"
        write_toml(path, dump_section(self.job_config()), mode=0o600)
        return path

    def start_broker(self) -> RunningBroker:
        """Mosquitto with the generated config on this fleet's loopback port."""
        self.broker = start_dev_broker(
            self.fleet, self.files.out_dir, port=self.fleet.fleet.broker_port
        )
        return self.broker

    def start_agents(self, device_ids: list[str] | None = None) -> None:
        """One ``ftte-agent`` process per device (one torch thread each: 2 cores are shared)."""
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        for device_id in device_ids or list(self.files.device_configs):
            log = (self.run_dir / f"agent-{device_id}.log").open("ab")
            self.agents[device_id] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edge_agent",
                    "--config",
                    str(self.files.device_configs[device_id]),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def stop_agents(self, timeout_s: float = 20.0) -> dict[str, int]:
        """SIGTERM every agent and wait; return their exit codes."""
        for process in self.agents.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {}
        for device_id, process in self.agents.items():
            try:
                codes[device_id] = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[device_id] = process.wait()
        self.agents.clear()
        return codes

    def stop(self) -> None:
        """Stop agents, then the broker."""
        self.stop_agents()
        if self.broker is not None:
            self.broker.stop()
