"""The orchestrator's job file (``job.toml``), loaded and validated once."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from ftte.config import load_section, read_toml, resolve
from ftte.ids import validate_id
from ftte.transport.mqtt import BrokerSettings
from ftte.wire.messages import TrainConfig
from orchestrator.presets import PRESETS
from orchestrator.telemetry import InfluxConfig


@dataclass(frozen=True)
class JobSection:
    """What to train, with which strategy, until when."""

    name: str
    fleet: str
    run_dir: Path
    task: str = "digits"
    strategy: str = "ftte"
    seed: int = 0
    num_partitions: int = 20  # demo tasks: how many device partitions the data is cut into
    target_accuracy: float = 0.0  # 0: the task's own target
    max_versions: int = 1000
    max_wall_s: float = 3600.0
    buffer_size: int = 5
    clients_per_round: int = 5
    max_staleness: int = 50
    assignment_timeout_s: int = 600
    checkpoint_every: int = 1  # versions between checkpoints

    def __post_init__(self) -> None:
        validate_id(self.name, "job.name")
        validate_id(self.fleet, "job.fleet")
        if self.strategy not in PRESETS:
            raise ValueError(f"job.strategy {self.strategy!r}: choose one of {sorted(PRESETS)}")
        for name in ("max_versions", "buffer_size", "clients_per_round", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"job.{name} must be at least 1")


@dataclass(frozen=True)
class JobConfig:
    """The whole ``job.toml``."""

    job: JobSection
    broker: BrokerSettings
    train: TrainConfig = field(default_factory=TrainConfig)
    influx: InfluxConfig | None = None


def load_job_config(path: Path) -> JobConfig:
    """Read and validate a job file; relative paths are relative to the file."""
    config = load_section(JobConfig, read_toml(path), str(path), "")
    return replace(
        config,
        job=replace(config.job, run_dir=resolve(path, config.job.run_dir)),
        broker=replace(config.broker, ca_file=resolve(path, config.broker.ca_file)),
    )
