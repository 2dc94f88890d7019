"""The orchestrator's job file (``job.toml``), loaded and validated once."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from ftte.config import dump_section, load_section, read_toml, resolve
from ftte.ids import validate_id
from ftte.tasks.base import Task
from ftte.training import TrainSettings
from ftte.transport.mqtt import BrokerSettings
from orchestrator.influence import InfluenceSettings
from orchestrator.ingest.workers import IngestSettings
from orchestrator.presets import PRESETS, preset, preset_strategy
from orchestrator.server import ServerSettings
from orchestrator.telemetry import InfluxConfig


class TargetOn(StrEnum):
    """Where the metric a job stops on is measured."""

    VALIDATION = "validation"  # the task's validation set, on the orchestrator
    FLEET = "fleet"  # the devices' held-out data (federated evaluation)


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
    # Where the job stops: the value of the task objective's primary metric (accuracy at
    # least, for classification; mse at most, for regression and reconstruction). Unset:
    # the task's own target. ``target_accuracy`` is the same for classification only.
    target: float | None = None
    target_accuracy: float | None = None
    max_versions: int = 1000
    max_wall_s: float = 3600.0
    # Evaluation and checkpoints run on a version once this many versions or seconds have
    # passed since they last ran, whichever comes first (orchestrator/cadence.py): off the
    # per-message path, so ingest is not capped by them. 0 s: every version, as before.
    # The stop rule and releases see the evaluated versions: a target reached is seen at
    # most evaluate_every versions or evaluate_every_s seconds later. A checkpoint only
    # bounds the journal (and so replay time): every acknowledged update is journaled.
    evaluate_every: int = 50
    evaluate_every_s: float = 1.0
    checkpoint_every: int = 100
    checkpoint_every_s: float = 5.0
    # The slice planner rescores tensors (a gradient pass on the validation set) every
    # [server] rescore_every versions, and, here, at most once per this many seconds; 0:
    # versions only, as the simulator runs.
    rescore_every_s: float = 5.0
    keep_releases: int = 5  # newest releases kept in run_dir/releases, beside the best
    # Where the target's metric is measured: the orchestrator's validation set, or the
    # fleet's own (devices' held-out data, over at least fleet_min_devices reports).
    target_on: TargetOn = TargetOn.VALIDATION
    fleet_min_devices: int = 3

    def __post_init__(self) -> None:
        validate_id(self.name, "job.name")
        validate_id(self.fleet, "job.fleet")
        if self.strategy not in PRESETS:
            raise ValueError(f"job.strategy {self.strategy!r}: choose one of {sorted(PRESETS)}")
        for name in (
            "max_versions",
            "evaluate_every",
            "checkpoint_every",
            "keep_releases",
            "fleet_min_devices",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"job.{name} must be at least 1")
        for name in ("evaluate_every_s", "checkpoint_every_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"job.{name} must be >= 0 (seconds; 0: every version)")
        if not self.rescore_every_s >= 0:
            raise ValueError("job.rescore_every_s must be >= 0 (seconds; 0: versions only)")
        if self.target_accuracy is not None and self.target_accuracy <= 0:
            raise ValueError(
                f"job.target_accuracy = {self.target_accuracy} would stop at once: leave it "
                "out for the task's own target"
            )
        if self.target is not None and self.target_accuracy is not None:
            raise ValueError(
                "job.target and job.target_accuracy are both set: keep job.target (the value "
                "of the task objective's primary metric) and remove job.target_accuracy"
            )

    def stop_target(self, task: Task) -> float:
        """The primary metric's value this job stops at, checked against ``task``'s
        objective and where it is measured; a ValueError names the field and the fix."""
        objective = task.objective
        if self.target_accuracy is not None and objective.primary != "accuracy":
            raise ValueError(
                f"job.target_accuracy = {self.target_accuracy}: task {self.task!r} is "
                f"{objective.name}, measured by {objective.primary} "
                f"({'higher' if objective.higher_is_better else 'lower'} is better); set "
                f"job.target to the {objective.primary} to stop at instead"
            )
        if self.target_on is TargetOn.VALIDATION and task.validation is None:
            raise ValueError(
                f"job.target_on = 'validation', but task {self.task!r} has no validation set: "
                "set job.target_on = 'fleet' (devices measure the model on held-out data)"
            )
        for given in (self.target, self.target_accuracy):
            if given is not None:
                return given
        return task.target


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
    ingest: IngestSettings = field(default_factory=IngestSettings)
    # Pre-aggregating site gateways and the devices each answers for, as fleet.toml's
    # [[sites]] with pre_aggregate = true and their devices: a combined update naming
    # any other device is refused.
    sites: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        preset_strategy(self.job.strategy, self.strategy)  # refuses a bad [strategy] now
        for site, devices in self.sites.items():
            validate_id(site, "sites: a site name")
            for device in devices:
                validate_id(device, f"sites.{site}: a device id")

    def gateway_tables(self) -> dict[str, dict[str, Any]]:
        """What a site gateway's ``gateway.toml`` must share with this job: the assignment
        timeout, the devices' delta encoding and the influence bounds (equal say is the
        orchestrator's alone), for ``ftte broker init --job``."""
        if not preset_strategy(self.job.strategy, self.strategy).combines_site_rows:
            raise ValueError(
                f"job.strategy = {self.job.strategy!r} takes no combined updates from site "
                "gateways: set pre_aggregate = false on the fleet's [[sites]], or run an "
                "ftte strategy"
            )
        return {
            "gateway": {
                "assignment_timeout_s": self.server.assignment_timeout_s,
                "delta_encoding": preset(self.job.strategy).delta_encoding.value,
            },
            "influence": dump_section(replace(self.influence, equal_say_window=0)),
        }


def load_job_config(path: Path) -> JobConfig:
    """Read and validate a job file; relative paths are relative to the file."""
    config = load_section(JobConfig, read_toml(path), str(path), "")
    return replace(
        config,
        job=replace(config.job, run_dir=resolve(path, config.job.run_dir)),
        broker=replace(config.broker, ca_file=resolve(path, config.broker.ca_file)),
        ingest=replace(config.ingest, accounts=resolve(path, config.ingest.accounts)),
    )
