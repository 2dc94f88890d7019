"""The edge agent's configuration (``agent.toml``), loaded and validated once at start."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edge_agent.runtime import RUNTIMES
from ftte.config import ConfigError, load_section, read_toml, resolve
from ftte.ids import validate_id
from ftte.sensors import SensorSource
from ftte.transport.mqtt import BrokerSettings


@dataclass(frozen=True)
class AgentSection:
    """Who the device is and what it can do."""

    device_id: str
    fleet: str
    state_dir: Path
    # What the whole agent process may hold (resident); training gets this minus the
    # agent's own baseline, measured at start (docs/architecture.md, Budgets). 0: training
    # gets a quarter of the memory available once the agent has loaded.
    memory_budget_bytes: int = 0
    compute_class: str = "unknown"
    # Demo only: stretch each training by this factor to imitate a slower device.
    slowdown: float = 1.0
    # A finished update no acknowledgement settled this long after a send is sent again;
    # the wait doubles after each resend up to resend_max_s. The orchestrator acknowledges
    # within milliseconds unless it, or the way to it, is down: 30 s sends nothing twice in
    # normal operation, and 8 min bounds the copies an hours-long outage queues at the broker
    # to about ten per update.
    resend_after_s: float = 30.0
    resend_max_s: float = 480.0
    # The training runtime (edge_agent.runtime.RUNTIMES): "lean" trains the layer spec's
    # layers in numpy without torch; "torch" is the reference and trains any model.
    runtime: str = "lean"
    # Lab fleets only: announce this training budget as is, with no baseline subtracted.
    # For models whose training needs less memory than process RSS varies by (the demo's
    # budgets are fractions of a 1 MB training peak); exclusive with memory_budget_bytes.
    training_budget_bytes: int = 0

    def __post_init__(self) -> None:
        validate_id(self.device_id, "agent.device_id")
        validate_id(self.fleet, "agent.fleet")
        if self.memory_budget_bytes < 0:
            raise ValueError("memory_budget_bytes must be >= 0 (0 measures it)")
        if self.training_budget_bytes < 0:
            raise ValueError("training_budget_bytes must be >= 0 (0: not set)")
        if self.memory_budget_bytes and self.training_budget_bytes:
            raise ValueError(
                "set memory_budget_bytes (the whole agent) or training_budget_bytes (labs), "
                "not both"
            )
        if self.slowdown < 1.0:
            raise ValueError("slowdown is a factor >= 1.0")
        if self.runtime not in RUNTIMES:
            raise ValueError(
                f"runtime {self.runtime!r} is unknown: write runtime = "
                + " or ".join(f'"{r}"' for r in RUNTIMES)
            )
        if not self.resend_after_s > 0:
            raise ValueError("resend_after_s must be positive (seconds)")
        if not self.resend_max_s >= self.resend_after_s:
            raise ValueError("resend_max_s must be >= resend_after_s (seconds)")


@dataclass(frozen=True)
class DataSection:
    """Where the local training data comes from: exactly one of the four sources.

    - ``sensors``: a logger's CSV file or folder, windowed as ``[data.sensors]`` says
      (``ftte.sensors.SensorSource``), read again at every assignment;
    - ``path``: an ``.npz`` with arrays ``x`` (float32, samples first) and ``y`` (int labels),
      or a header-less ``.csv`` of windows whose last column is the label;
    - ``loader``: ``package.module:function`` returning an ``ftte.tasks.base.Dataset``,
      called with ``loader_args`` as keyword arguments at every assignment;
    - ``partition``: this device's share of the built-in ``task`` (demo and tests).
    The model architecture always comes from ``task``.
    """

    task: str
    path: Path | None = None
    loader: str | None = None
    partition: int | None = None
    num_partitions: int = 1
    seed: int = 0
    samples_per_device: int = 60
    sensors: SensorSource | None = None
    loader_args: dict[str, Any] = field(default_factory=dict)
    # Share of the samples kept out of training to measure each model version the device is
    # sent (federated evaluation; the orchestrator needs no validation set of its own).
    holdout: float = 0.1

    def __post_init__(self) -> None:
        given = (self.sensors, self.path, self.loader, self.partition)
        sources = [s for s in given if s is not None]
        if len(sources) != 1:
            raise ValueError(
                "set exactly one of data.sensors, data.path, data.loader or data.partition"
            )
        if self.loader_args and self.loader is None:
            raise ValueError("data.loader_args needs data.loader")
        if self.partition is not None and not 0 <= self.partition < self.num_partitions:
            raise ValueError("data.partition must be in [0, data.num_partitions)")
        if not 0 <= self.holdout <= 0.5:
            raise ValueError("data.holdout must be in [0, 0.5] (a share of the samples)")


@dataclass(frozen=True)
class AgentConfig:
    """The whole ``agent.toml``."""

    agent: AgentSection
    broker: BrokerSettings
    data: DataSection = field(default_factory=lambda: DataSection(task="digits", partition=0))


def load_agent_config(path: Path) -> AgentConfig:
    """Read and validate an agent config; relative paths are relative to the file."""
    config = load_section(AgentConfig, read_toml(path), str(path), "")
    if config.broker.username != config.agent.device_id:
        raise ConfigError(
            str(path), "broker.username", "must equal agent.device_id (the broker's ACL keys on it)"
        )
    data = config.data
    if data.path is not None:
        data = replace(data, path=resolve(path, data.path))
    if data.sensors is not None:
        data = replace(data, sensors=replace(data.sensors, path=resolve(path, data.sensors.path)))
    return replace(
        config,
        agent=replace(config.agent, state_dir=resolve(path, config.agent.state_dir)),
        broker=replace(config.broker, ca_file=resolve(path, config.broker.ca_file)),
        data=data,
    )
