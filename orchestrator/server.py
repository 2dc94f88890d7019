"""The training server: global model, fleet registry, dispatch and validated aggregation.

Transport-free and clock-free: the discrete-event simulator and the MQTT service both drive
this one object, so the math that is benchmarked is the math that runs in the field.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ftte.errors import Rejected, RejectReason
from ftte.memory import MemoryModel
from ftte.tasks.base import Task
from ftte.wire.messages import Assignment, DeltaEncoding, TensorDict, TrainConfig, Update
from orchestrator.planner import BudgetTooSmall, PlanMode, SlicePlan, SlicePlanner
from orchestrator.scoring import gradient_scores
from orchestrator.strategies.base import AggregationReport, ReceivedUpdate, Strategy


@dataclass(frozen=True)
class ServerConfig:
    """How the server plans, validates and evaluates."""

    job: str = "job"
    plan_mode: PlanMode = PlanMode.PER_DEVICE
    train: TrainConfig = field(default_factory=TrainConfig)
    model_encoding: DeltaEncoding = DeltaEncoding.FLOAT32  # model values sent to devices
    max_staleness: int = 50  # updates older than this many versions are refused
    rescore_every: int = 10  # versions between contribution-score refreshes
    model_seed: int = 0


@dataclass
class DeviceRecord:
    """What the server knows of one device."""

    device_id: str
    budget_bytes: int
    online: bool = True
    synced_version: int = -1  # model version whose values the device holds; -1: none
    open_assignment: Assignment | None = None
    plan: SlicePlan | None = None
    excluded: str | None = None  # why this device cannot take part, if it cannot


@dataclass(frozen=True)
class Outcome:
    """What receiving one update did."""

    accepted: bool
    reason: RejectReason | None = None
    aggregation: AggregationReport | None = None


class TrainingServer:
    """Owns the global model and turns device updates into new model versions."""

    def __init__(self, task: Task, strategy: Strategy, config: ServerConfig) -> None:
        self.task = task
        self.strategy = strategy
        self.config = config
        torch.manual_seed(config.model_seed)
        self.model = task.make_model()
        self.model.eval()
        # The numpy arrays are the model: torch parameters are views of them, so a
        # strategy's in-place update is what evaluation sees, with no copy.
        self.params: TensorDict = {}
        for name, p in self.model.named_parameters():
            arr = p.detach().numpy().astype(np.float32, copy=True)
            p.requires_grad_(False)
            p.data = torch.from_numpy(arr)
            self.params[name] = arr
        self.shapes = {n: a.shape for n, a in self.params.items()}
        self.version = 0
        self.stamps = dict.fromkeys(self.params, 0)  # version at which each tensor last changed
        self.memory = MemoryModel.profile(task.make_model(), task.input_shape)
        self.planner = SlicePlanner(self.memory, config.train.batch_size, config.train.momentum)
        self.devices: dict[str, DeviceRecord] = {}
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        self.seen_update_ids: set[str] = set()
        self._scores: dict[str, float] = {}
        self._scores_version = -1
        self._plans: dict[int, SlicePlan] = {}
        self._next_assignment = 1

    # -- fleet -------------------------------------------------------------------------

    def register(self, device_id: str, budget_bytes: int, synced_version: int = -1) -> None:
        """Add or refresh a device (its birth message); it is online.

        An open assignment survives a re-birth: the agent keeps finished updates in a
        durable outbox and sends them after reconnecting.
        """
        record = self.devices.get(device_id)
        if record is None:
            record = DeviceRecord(device_id, budget_bytes, synced_version=synced_version)
            self.devices[device_id] = record
        if record.budget_bytes != budget_bytes:
            record.plan = None
            record.excluded = None
        record.budget_bytes = budget_bytes
        record.online = True
        # A device that restarted may hold less than we sent it: trust the lower version.
        # One claiming more than we know of holds values from a lost future: resend all.
        if synced_version > record.synced_version:
            record.synced_version = -1
        else:
            record.synced_version = synced_version

    def expire(self, device_id: str) -> None:
        """Give up on a device's open assignment (timed out); the device becomes idle."""
        record = self.devices.get(device_id)
        if record is not None and record.open_assignment is not None:
            record.open_assignment = None
            self.strategy.on_dropout(device_id)

    def set_offline(self, device_id: str) -> None:
        """A device went away (last will, or the simulator's dropout)."""
        record = self.devices.get(device_id)
        if record is None:
            return
        record.online = False
        if record.open_assignment is not None:
            record.open_assignment = None
            self.strategy.on_dropout(device_id)

    def full_model_peak(self) -> int:
        """Predicted training peak of the whole model under this job's training settings."""
        train = self.config.train
        return self.memory.full_model_peak(train.batch_size, train.momentum)

    def idle_devices(self) -> list[str]:
        """Online devices with no open assignment that can take part."""
        return [
            d.device_id
            for d in self.devices.values()
            if d.online and d.open_assignment is None and d.excluded is None
        ]

    def in_flight(self) -> int:
        """Devices currently training."""
        return sum(1 for d in self.devices.values() if d.open_assignment is not None)

    # -- dispatch ----------------------------------------------------------------------

    def dispatch(self, rng: np.random.Generator) -> list[Assignment]:
        """Assignments for the devices the strategy wants to start now."""
        chosen = self.strategy.select(self.idle_devices(), self.in_flight(), rng)
        assignments = []
        for device_id in chosen:
            assignment = self._assign(self.devices[device_id])
            if assignment is not None:
                assignments.append(assignment)
        return assignments

    def plan_for(self, device_id: str) -> SlicePlan:
        """The slice this device trains now (planned under its budget and the mode)."""
        record = self.devices[device_id]
        self._refresh_scores()
        if record.plan is None:
            record.plan = self._plan_budget(self._planning_budget(record))
        return record.plan

    def _assign(self, record: DeviceRecord) -> Assignment | None:
        try:
            plan = self.plan_for(record.device_id)
        except BudgetTooSmall as exc:
            record.excluded = str(exc)
            self.strategy.on_dropout(record.device_id)
            return None
        tensors = {
            n: self.params[n].copy() for n, v in self.stamps.items() if v > record.synced_version
        }
        assignment = Assignment(
            job=self.config.job,
            device_id=record.device_id,
            assignment_id=f"{record.device_id}.{self._next_assignment}",
            version=self.version,
            trainable=plan.trainable,
            tensors=tensors,
            train=replace(self.config.train, micro_batch=plan.micro_batch),
        )
        self._next_assignment += 1
        record.open_assignment = assignment
        record.synced_version = self.version
        return assignment

    def next_assignment_number(self) -> int:
        """The counter behind assignment ids (checkpointed so ids never repeat)."""
        return self._next_assignment

    def restore_assignment_number(self, value: int) -> None:
        """Continue assignment ids from a checkpoint."""
        self._next_assignment = value

    def _planning_budget(self, record: DeviceRecord) -> int:
        if self.config.plan_mode is PlanMode.WEAKEST:
            return min(d.budget_bytes for d in self.devices.values())
        return record.budget_bytes

    def _plan_budget(self, budget: int) -> SlicePlan:
        if self.config.plan_mode is PlanMode.FULL:
            return self.planner.full()
        plan = self._plans.get(budget)
        if plan is None:
            plan = self.planner.plan(budget, self._scores)
            self._plans[budget] = plan
        return plan

    def _refresh_scores(self) -> None:
        due = self._scores_version < 0 or self.version - self._scores_version >= (
            self.config.rescore_every
        )
        if self.config.plan_mode is PlanMode.FULL or not due:
            return
        self._scores = gradient_scores(self.model, self.task.validation)
        self._scores_version = self.version
        self._plans.clear()
        for record in self.devices.values():
            record.plan = None

    # -- updates -----------------------------------------------------------------------

    def expected_shapes(self, device_id: str) -> Mapping[str, tuple[int, ...]] | None:
        """Shapes of the slice this device was assigned, for bounded decoding.

        ``None`` when it has no open assignment: decoding then checks only the model's
        tensor names, and ``receive`` names the real problem (replayed or unexpected).
        """
        record = self.devices.get(device_id)
        if record is None or record.open_assignment is None:
            return None
        return {n: self.shapes[n] for n in record.open_assignment.trainable}

    def receive(self, update: Update) -> Outcome:
        """Validate one decoded update, buffer it, and aggregate when the strategy is ready."""
        try:
            received = self._validate(update)
        except Rejected as exc:
            self.rejected[exc.reason.value] += 1
            self._close_if_answered(update)
            # Freeing the device may complete a synchronous round.
            return Outcome(accepted=False, reason=exc.reason, aggregation=self.aggregate_if_ready())
        self.strategy.add(received)
        self.seen_update_ids.add(update.update_id)
        self.devices[update.device_id].open_assignment = None
        self.accepted += 1
        report = self.aggregate_if_ready()
        return Outcome(accepted=True, aggregation=report)

    def _close_if_answered(self, update: Update) -> None:
        """A refused answer to a device's open assignment still frees the device."""
        record = self.devices.get(update.device_id)
        if record is None or record.open_assignment is None:
            return
        if record.open_assignment.assignment_id == update.assignment_id:
            record.open_assignment = None
            self.strategy.on_dropout(update.device_id)

    def reject(self, reason: RejectReason) -> None:
        """Count a rejection that happened before an update could be decoded."""
        self.rejected[reason.value] += 1

    def aggregate_if_ready(self) -> AggregationReport | None:
        """Apply the buffer if the strategy says so; bump the version."""
        if not self.strategy.ready():
            return None
        report = self.strategy.aggregate(self.params)
        self.version += 1
        for name in report.changed:
            self.stamps[name] = self.version
        return report

    def _validate(self, update: Update) -> ReceivedUpdate:
        record = self.devices.get(update.device_id)
        if record is None:
            raise Rejected(RejectReason.UNKNOWN_DEVICE, f"device {update.device_id!r}")
        if update.update_id in self.seen_update_ids:
            raise Rejected(RejectReason.REPLAYED, f"update id {update.update_id!r}")
        assignment = record.open_assignment
        if assignment is None or assignment.assignment_id != update.assignment_id:
            raise Rejected(RejectReason.UNEXPECTED, f"no open assignment {update.assignment_id!r}")
        if update.base_version != assignment.version:
            raise Rejected(RejectReason.MALFORMED, "base version differs from the assignment's")
        if set(update.delta) != set(assignment.trainable):
            raise Rejected(RejectReason.WRONG_SLICE, "delta tensors differ from the assignment")
        for name, arr in update.delta.items():
            if arr.shape != self.shapes[name]:
                raise Rejected(RejectReason.BAD_SHAPE, f"{name}: {arr.shape}")
            if not np.isfinite(arr).all():
                raise Rejected(RejectReason.NON_FINITE, name)
        age = self.version - update.base_version
        if age > self.config.max_staleness:
            raise Rejected(RejectReason.TOO_STALE, f"age {age} > {self.config.max_staleness}")
        return ReceivedUpdate(update=update, age=age)

    # -- evaluation --------------------------------------------------------------------

    def evaluate(self) -> tuple[float, float]:
        """Accuracy and mean loss of the global model on the task's validation data."""
        val = self.task.validation
        with torch.no_grad():
            logits = self.model(torch.from_numpy(val.x))
            y = torch.from_numpy(val.y)
            loss = float(torch.nn.functional.cross_entropy(logits, y))
            acc = float((logits.argmax(dim=1) == y).float().mean())
        return acc, loss
