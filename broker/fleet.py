"""The fleet inventory (``fleet.toml``): the broker and every device that may connect."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.runtime import RUNTIMES
from ftte.config import ConfigError, load_section, read_toml
from ftte.ids import validate_id
from ftte.sensors import SensorSource
from ftte.wire.limits import MQTT_MAX_PACKET_BYTES


@dataclass(frozen=True)
class FleetSection:
    """The fleet's name, its broker's address and the task its devices train."""

    name: str
    broker_host: str = "localhost"  # name in the server certificate; localhost/127.0.0.1 added
    broker_port: int = 8883
    bind_address: str = "0.0.0.0"
    task: str = "vibration"
    # Where the generated files will live on the gateway (paths inside mosquitto.conf).
    install_dir: Path = Path("/etc/mosquitto/ftte")
    persistence_dir: Path = Path("/var/lib/mosquitto")
    # Where the agent keeps its outbox and state on each device.
    agent_state_dir: Path = Path("/var/lib/ftte-agent")
    # Memory the broker may hold queued for one client: in practice the orchestrator's
    # backlog while it is away. Past it the broker drops messages; the orchestrator counts
    # them and the agents send their unacknowledged updates again, so nothing is lost.
    broker_queue_bytes: int = 256 * 2**20
    # Broker accounts for ingest worker processes (ftte_ingest_1 …; ``[ingest] workers`` in
    # job.toml uses up to this many): each may read every update and write the hand-off topic.
    ingest_workers: int = 0

    def __post_init__(self) -> None:
        validate_id(self.name, "fleet.name")
        if self.ingest_workers < 0:
            raise ValueError("fleet.ingest_workers must be >= 0 (broker accounts for workers)")
        if not 0 < self.broker_port < 65536:
            raise ValueError("fleet.broker_port must be a TCP port (1-65535)")
        if self.broker_queue_bytes < MQTT_MAX_PACKET_BYTES:
            raise ValueError(
                f"fleet.broker_queue_bytes must hold one largest message: at least "
                f"{MQTT_MAX_PACKET_BYTES} B"
            )


@dataclass(frozen=True)
class DeviceEntry:
    """One device: its id (also its broker username) and its memory budget."""

    id: str
    memory_budget_bytes: int  # the whole agent's (0 with training_budget_bytes)
    compute_class: str = "unknown"
    # Where the device's data comes from (at most one of data_path, sensors and loader;
    # none: the task's demo partition):
    data_path: Path | None = None  # labelled windows (.npz, or a header-less .csv) on it
    slowdown: float = 1.0  # lab and demo fleets: stretch training to imitate a slower device
    runtime: str = "lean"  # the agent's training runtime (edge_agent.runtime.RUNTIMES)
    training_budget_bytes: int = 0  # lab fleets: training's own budget (AgentSection)
    site: str = ""  # the site gateway it connects to ("": the central broker)
    sensors: SensorSource | None = None  # a logger's CSV file or folder, windowed on it
    loader: str | None = None  # package.module:function on it, called with loader_args
    loader_args: dict[str, Any] = field(default_factory=dict)
    holdout: float | None = None  # share of its data it measures models on (None: agent's)

    def __post_init__(self) -> None:
        validate_id(self.id, "device id")
        budgets = (self.memory_budget_bytes, self.training_budget_bytes)
        if min(budgets) < 0 or (budgets[0] > 0) == (budgets[1] > 0):
            raise ValueError(
                f"{self.id}: set a positive memory_budget_bytes (what its whole agent may "
                "use) or, for lab fleets, training_budget_bytes, not both"
            )
        if self.slowdown < 1.0:
            raise ValueError(f"slowdown of {self.id} must be >= 1.0")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime of {self.id} must be one of {', '.join(RUNTIMES)}")
        if sum(s is not None for s in (self.data_path, self.sensors, self.loader)) > 1:
            raise ValueError(f"{self.id}: set at most one of data_path, sensors and loader")


@dataclass(frozen=True)
class SiteEntry:
    """A site gateway: its own Mosquitto, which the site's devices connect to, bridged to
    the central broker over one TLS connection with the site's own credentials."""

    name: str
    host: str  # the gateway's name in its certificate, as the site's devices reach it
    port: int = 8883
    bind_address: str = "0.0.0.0"
    install_dir: Path = Path("/etc/mosquitto/ftte-site")
    persistence_dir: Path = Path("/var/lib/mosquitto")
    # A gateway process (`ftte gateway`) combines the site's updates into one per flush:
    # the bridge then carries its combined updates up instead of each device's. FTTE jobs
    # of models without batch norms only (orchestrator.gateway).
    pre_aggregate: bool = False

    def __post_init__(self) -> None:
        validate_id(self.name, "site name")
        if not 0 < self.port < 65536:
            raise ValueError(f"port of site {self.name} must be a TCP port (1-65535)")


@dataclass(frozen=True)
class Fleet:
    """The whole inventory."""

    fleet: FleetSection
    devices: list[DeviceEntry] = field(default_factory=list)
    sites: list[SiteEntry] = field(default_factory=list)

    def site_devices(self, site: str) -> list[DeviceEntry]:
        """The devices that connect through ``site`` ("" : the central broker)."""
        return [d for d in self.devices if d.site == site]


def load_fleet(path: Path) -> Fleet:
    """Read and validate ``fleet.toml``; device ids must be unique."""
    fleet = load_section(Fleet, read_toml(path), str(path), "")
    seen: set[str] = set()
    for i, device in enumerate(fleet.devices):
        if device.id in seen:
            raise ConfigError(str(path), f"devices[{i}].id", f"duplicate id {device.id!r}")
        seen.add(device.id)
    sites = {s.name for s in fleet.sites}
    if len(sites) != len(fleet.sites):
        raise ConfigError(str(path), "sites", "two sites have the same name")
    for i, device in enumerate(fleet.devices):
        if device.site and device.site not in sites:
            raise ConfigError(
                str(path), f"devices[{i}].site", f"no site {device.site!r}: add it under [[sites]]"
            )
    return fleet
