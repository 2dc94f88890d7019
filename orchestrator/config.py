"""The orchestrator's job file (``job.toml``), loaded and validated once."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ftte.config import load_section, read_toml, resolve
from ftte.ids import validate_id
from ftte.training import TrainSettings
from ftte.transport.mqtt import BrokerSettings
from orchestrator.influence import InfluenceSettings
from orchestrator.presets import PRESETS, preset_strategy
from orchestrator.server import ServerSettings
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
    checkpoint_every: int = 1  # versions between checkpoints
    keep_releases: int = 5  # newest releases kept in run_dir/releases, beside the best

    def __post_init__(self) -> None:
        validate_id(self.name, "job.name")
        validate_id(self.fleet, "job.fleet")
        if self.strategy not in PRESETS:
            raise ValueError(f"job.strategy {self.strategy!r}: choose one of {sorted(PRESETS)}")
        for name in ("max_versions", "checkpoint_every", "keep_releases"):
            if getattr(self, name) < 1:
                raise ValueError(f"job.{name} must be at least 1")


@dataclass(frozen=True)
class JobConfig:
    """The whole ``job.toml``: each table is one component's config, defaults in its class.

    ``[strategy]`` holds the chosen strategy's parameters (``buffer_size``,
    ``clients_per_round``, ``server_lr``, …; ``ftte strategies`` lists them with defaults).
    """

    job: JobSection
    broker: BrokerSettings
    train: TrainSettings = field(default_factory=TrainSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    influence: InfluenceSettings = field(default_factory=InfluenceSettings)
    strategy: dict[str, Any] = field(default_factory=dict)
    influx: InfluxConfig | None = None

    def __post_init__(self) -> None:
        preset_strategy(self.job.strategy, self.strategy)  # refuses a bad [strategy] now


def load_job_config(path: Path) -> JobConfig:
    """Read and validate a job file; relative paths are relative to the file."""
    config = load_section(JobConfig, read_toml(path), str(path), "")
    return replace(
        config,
        job=replace(config.job, run_dir=resolve(path, config.job.run_dir)),
        broker=replace(config.broker, ca_file=resolve(path, config.broker.ca_file)),
    )
