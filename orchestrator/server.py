"""The training engine: global model, fleet registry, dispatch, validated aggregation, state.

Transport-free and clock-free: drivers hand it bytes and the time (``ingest(device, payload,
now)``, ``expire_overdue(now)``), so the discrete-event simulator, the MQTT service and the
aggregator benchmark run the same policies (validation, timeouts, bad-update handling) and
the math that is benchmarked is the math that runs in the field. ``state_dict`` /
``load_state_dict`` own the schema of everything a restart needs.
"""

from __future__ import annotations

import heapq
import secrets
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ftte.errors import Rejected, RejectReason
from ftte.memory import MemoryModel
from ftte.tasks.base import Task
from ftte.tasks.torch_model import model_buffers
from ftte.wire import WireLimits, decode_update
from ftte.wire.codec import decode_combined
from ftte.wire.messages import (
    Assignment,
    CombinedUpdate,
    DeltaEncoding,
    SiteMember,
    TensorDict,
    TrainConfig,
    Update,
)
from orchestrator.buffers import aggregate_buffers, check_buffers
from orchestrator.evaluation import FleetEvaluation
from orchestrator.influence import InfluenceBound, InfluenceSettings
from orchestrator.planner import BudgetTooSmall, PlanMode, SlicePlan, SlicePlanner, budget_class
from orchestrator.scoring import gradient_scores, size_scores
from orchestrator.strategies.base import AggregationReport, ReceivedUpdate, Strategy

STATE_FORMAT = 8  # bump when the state_dict schema changes


@dataclass(frozen=True)
class ServerSettings:
    """The engine's policies a job may tune (``[server]`` in ``job.toml``)."""

    max_staleness: int = 50  # updates older than this many versions are refused
    rescore_every: int = 10  # versions between contribution-score refreshes
    # A device that has not answered by then is given up on and may be dispatched again;
    # its late answer is refused as unexpected.
    assignment_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.max_staleness < 0:
            raise ValueError("max_staleness must be >= 0 (versions an update may lag)")
        if self.rescore_every < 1:
            raise ValueError("rescore_every must be at least 1 (versions)")
        if not self.assignment_timeout_s > 0:
            raise ValueError("assignment_timeout_s must be positive (seconds)")


@dataclass(frozen=True)
class ServerConfig:
    """How the server plans, validates and evaluates: a preset's choices plus the job's."""

    job: str = "job"
    plan_mode: PlanMode = PlanMode.PER_DEVICE
    train: TrainConfig = field(default_factory=TrainConfig)
    model_encoding: DeltaEncoding = DeltaEncoding.FLOAT32  # model values sent to devices
    model_seed: int = 0
    settings: ServerSettings = field(default_factory=ServerSettings)
    influence: InfluenceSettings = field(default_factory=InfluenceSettings)
    # The planner's rescoring also waits this many seconds of the driver's clock since the
    # last (the live service's job.rescore_every_s; 0, the simulator's: versions only).
    rescore_every_s: float = 0.0
    # Tag of this run's assignment ids; None draws a random one (a fresh job in the field).
    # The simulator fixes it: payload sizes, so virtual times, depend on the ids' bytes.
    run_tag: str | None = None


@dataclass(frozen=True)
class OpenAssignment:
    """What answering an assignment is checked against; the tensors went to the device."""

    assignment_id: str
    version: int
    trainable: tuple[str, ...]
    micro_batch: int
    dispatched_at: float

    def saved(self) -> dict[str, Any]:
        """Its checkpoint and journal form (the dispatch time is not kept: see ``restored``)."""
        return {
            "id": self.assignment_id,
            "version": self.version,
            "trainable": list(self.trainable),
            "micro_batch": self.micro_batch,
        }

    @classmethod
    def restored(cls, saved: dict[str, Any], now: float) -> OpenAssignment:
        """From ``saved``, timed from ``now`` (the device may have lost it while we were away)."""
        trainable = tuple(saved["trainable"])
        return cls(saved["id"], saved["version"], trainable, saved["micro_batch"], now)


@dataclass
class DeviceRecord:
    """What the server knows of one device."""

    device_id: str
    budget_bytes: int
    online: bool = True
    synced_version: int = -1  # model version whose values the device holds; -1: none
    open: OpenAssignment | None = None
    # Replay protection in O(devices): assignment ids only grow, an answer must name the
    # open one, and the one closed last is told apart as a replay.
    last_closed: str | None = None
    # The update that closed it: sent again (its acknowledgement lost), it is a duplicate.
    last_update: str | None = None
    plan: SlicePlan | None = None
    excluded: str | None = None  # why this device cannot take part, if it cannot
    turns: int = 0  # assignments dispatched to it: which of its class's plans comes next


@dataclass(frozen=True)
class Refusal:
    """A payload the server will not apply: the reason, and the update if it decoded."""

    device_id: str  # the sender
    reason: RejectReason
    detail: str
    update: Update | None = None
    # The sender's own answer to its open assignment (refused, e.g. too stale): settling
    # it frees the device. Anything else leaves the open assignment alone.
    answers_open: bool = False
    update_id: str | None = None  # the id its header names, if that much decoded


@dataclass(frozen=True)
class CombinedRefusal:
    """A site's combined update the server will not apply, and the members it frees: those
    whose open assignment it answered once its members checked out (e.g. all too stale)."""

    site: str
    reason: RejectReason
    detail: str
    frees: tuple[SiteMember, ...] = ()


@dataclass(frozen=True)
class AdmittedCombined:
    """A checked combined update: its buffer row and the members whose answers it holds."""

    row: ReceivedUpdate
    members: tuple[SiteMember, ...]


@dataclass(frozen=True)
class Outcome:
    """What one payload did."""

    accepted: bool
    update: Update | None = None  # decoded, accepted or not
    age: int = 0
    reason: RejectReason | None = None
    aggregation: AggregationReport | None = None


class TrainingServer:
    """Owns the global model and turns device payloads into new model versions."""

    def __init__(
        self,
        task: Task,
        strategy: Strategy,
        config: ServerConfig,
        limits: WireLimits | None = None,
    ) -> None:
        self.task = task
        self.strategy = strategy
        self.config = config
        self.settings = config.settings
        self.limits = limits or WireLimits()
        torch.manual_seed(config.model_seed)
        self.model = task.model.make_model()
        self.model.eval()
        # The numpy arrays are the model: torch parameters and buffers are views of them,
        # so a strategy's in-place update is what evaluation sees, with no copy.
        self.params: TensorDict = {}
        for name, p in self.model.named_parameters():
            arr = p.detach().numpy().astype(np.float32, copy=True)
            p.requires_grad_(False)
            p.data = torch.from_numpy(arr)
            self.params[name] = arr
        # Batch norms' running statistics travel, aggregate and are saved like parameters
        # (orchestrator.buffers); a model with buffers ftte cannot move is refused here.
        self.buffers: TensorDict = {}
        for name, b in model_buffers(self.model, task.model.layers).items():
            arr = b.numpy().astype(np.float32, copy=True)
            b.data = torch.from_numpy(arr)
            self.buffers[name] = arr
        self.shapes = {n: a.shape for n, a in self.model_state().items()}
        self.version = 0
        # Version at which each tensor (parameter or buffer) last changed.
        self.stamps = dict.fromkeys(self.shapes, 0)
        self.memory = MemoryModel.profile(task.model.make_model(), task.model.input_shape)
        self.planner = SlicePlanner(
            self.memory, config.train.batch_size, config.train.optimizer_slots
        )
        self.influence = InfluenceBound(config.influence)
        self.fleet_evaluation = FleetEvaluation(config.influence.max_samples)
        self.devices: dict[str, DeviceRecord] = {}
        # Site gateways and the devices each may answer for (``set_site``): configuration
        # the driver gives at start, as the broker's ACL does, so not part of the state.
        self.sites: dict[str, frozenset[str]] = {}
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        self._scores: dict[str, float] = {}
        self._scores_version = -1
        self._scores_at = 0.0  # the driver's time of the last rescoring
        # Plans by budget class (None: the class floor holds no slice), and the smallest
        # budget for the weakest-device mode: planning never walks the registry per event.
        # A class's plans are its best slice, or, when the scores are the tensors' sizes
        # (no validation data), the planner's cover, which its devices take in turn: sizes
        # never change, so a fixed slice would keep each device's data off every tensor
        # outside it for the whole job (docs/architecture.md, "Slice rotation").
        self._plans: dict[int, list[SlicePlan] | None] = {}
        self._weakest_budget: int | None = None
        # Assignment ids carry a tag drawn when a job starts afresh (kept across restarts):
        # the counter restarts at 1 in every job, and agents still holding an earlier job's
        # assignment would otherwise answer one of this job's with the same id.
        self._run_tag = config.run_tag or f"{secrets.randbits(32):08x}"
        self._next_assignment = 1
        # Kept in step with the records, so no call is proportional to the fleet size:
        # registration order (dispatch order is reproducible), idle and training devices,
        # and a heap of (deadline, device, assignment id) for timeouts (stale entries skipped).
        self._order: dict[str, int] = {}
        self._idle: set[str] = set()
        self._training: set[str] = set()
        self._deadlines: list[tuple[float, str, str]] = []
        # Told of each device the planner turns away, with the reason: the service logs it
        # and writes it to telemetry (the simulator counts exclusions in its result instead).
        self.on_excluded: Callable[[str, str], None] | None = None

    # -- fleet -------------------------------------------------------------------------

    def register(
        self,
        device_id: str,
        budget_bytes: int,
        synced_version: int = -1,
        model_job: str | None = None,
    ) -> None:
        """Add or refresh a device (its birth message); it is online.

        ``synced_version`` is the version of the model values the device says it holds, of
        ``model_job``'s model. Values of another job's model are none of this job's, and a
        device this server has never sent anything may hold another job's model without
        saying so (an agent that does not report ``model_job``): both get every tensor.
        An open assignment survives a re-birth: the agent keeps finished updates in a
        durable outbox and sends them after reconnecting.
        """
        if model_job is not None and model_job != self.config.job:
            synced_version = -1
        record = self.devices.get(device_id)
        if record is None:
            record = DeviceRecord(device_id, budget_bytes)
            self.devices[device_id] = record
            self._order[device_id] = len(self._order)
            self._weakest_budget = None
        if record.budget_bytes != budget_bytes:
            record.plan = None
            record.excluded = None
            self._weakest_budget = None
        record.budget_bytes = budget_bytes
        record.online = True
        # A device that restarted may hold less than we sent it: trust the lower version.
        # One claiming more than we know of holds values from a lost future: resend all.
        if synced_version > record.synced_version:
            record.synced_version = -1
        else:
            record.synced_version = synced_version
        self._file(record)

    def set_offline(self, device_id: str) -> AggregationReport | None:
        """A device went away (last will, or the simulator's dropout); its work is lost.

        Returns the aggregation this completed, if any (a round may wait only for it).
        """
        record = self.devices.get(device_id)
        if record is None:
            return None
        record.online = False
        self._drop_open(record)
        return self.aggregate_if_ready()

    def withdraw(self, device_id: str) -> AggregationReport | None:
        """Take back an assignment that could not be delivered; the device becomes idle."""
        record = self.devices.get(device_id)
        if record is None:
            return None
        self._drop_open(record)
        return self.aggregate_if_ready()

    def expire_overdue(self, now: float) -> list[str]:
        """Give up on assignments older than the timeout; return the devices freed.

        A round waiting for them may complete: call ``aggregate_if_ready`` after.
        """
        expired = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, device_id, assignment_id = heapq.heappop(self._deadlines)
            # Assignment ids never repeat: a matching id is the very assignment timed.
            if self._is_open(device_id, assignment_id):
                self._drop_open(self.devices[device_id])
                expired.append(device_id)
        return expired

    def full_model_peak(self) -> int:
        """Predicted training peak of the whole model under this job's training settings."""
        train = self.config.train
        return self.memory.full_model_peak(train.batch_size, train.optimizer_slots)

    def idle_devices(self) -> list[str]:
        """Online devices with no open assignment that can take part, in registration order."""
        return sorted(self._idle, key=self._order.__getitem__)

    def in_flight(self) -> int:
        """Devices currently training."""
        return len(self._training)

    def open_assignment(self, device_id: str) -> OpenAssignment | None:
        """The assignment ``device_id`` is answering now, if any."""
        record = self.devices.get(device_id)
        return None if record is None else record.open

    def devices_online(self) -> int:
        """Devices whose last word was that they are online."""
        return sum(1 for d in self.devices.values() if d.online)

    def excluded_devices(self) -> dict[str, str]:
        """Devices that cannot take part, each with the reason (until their budget changes)."""
        return {d.device_id: d.excluded for d in self.devices.values() if d.excluded}

    def _file(self, record: DeviceRecord) -> None:
        """Keep the idle and training sets in step with one record."""
        device_id = record.device_id
        if record.open is not None:
            self._training.add(device_id)
        else:
            self._training.discard(device_id)
        if record.online and record.open is None and record.excluded is None:
            self._idle.add(device_id)
        else:
            self._idle.discard(device_id)

    def _drop_open(self, record: DeviceRecord) -> None:
        if record.open is not None:
            record.open = None
            self.strategy.on_dropout(record.device_id)
        self._file(record)

    # -- dispatch ----------------------------------------------------------------------

    def dispatch(self, rng: np.random.Generator, now: float) -> list[Assignment]:
        """Assignments for the devices the strategy wants to start now."""
        if not self._idle:
            return []
        chosen = self.strategy.select(self.idle_devices(), self.in_flight(), rng)
        assignments = []
        # One copy of each tensor sent, shared by this dispatch's assignments (same version):
        # a copy per assignment held 10,000 copies of the model at a 10,000-device start.
        sent: TensorDict = {}
        for device_id in chosen:
            assignment = self._assign(self.devices[device_id], now, sent)
            if assignment is not None:
                assignments.append(assignment)
        return assignments

    def dispatch_record(self, assignments: list[Assignment]) -> dict[str, Any]:
        """What replaying a dispatch needs, for the driver to journal before sending it.

        An answer to an assignment opened after the last checkpoint is only accepted after a
        crash if the assignment can be reopened: the record holds the opened assignments,
        the id counter and the strategy's selection state (FedAvg's round).
        """
        return {
            "next_assignment": self._next_assignment,
            "selection": self.strategy.selection_state(),
            "opened": [
                {
                    "device_id": a.device_id,
                    "budget_bytes": self.devices[a.device_id].budget_bytes,
                    **OpenAssignment(
                        a.assignment_id, a.version, a.trainable, a.train.micro_batch, 0.0
                    ).saved(),
                }
                for a in assignments
            ],
        }

    def replay_dispatch(self, record: dict[str, Any], now: float) -> None:
        """Reopen the assignments of a journaled dispatch (after a crash, in journal order)."""
        for opened in record["opened"]:
            device_id = opened["device_id"]
            if device_id not in self.devices:  # its birth came after the checkpoint
                self.register(device_id, opened["budget_bytes"])
            device = self.devices[device_id]
            device.open = OpenAssignment.restored(opened, now)
            device.synced_version = opened["version"]
            device.turns += 1
            self._time(device, now)
        self._next_assignment = max(self._next_assignment, int(record["next_assignment"]))
        self.strategy.load_selection_state(record["selection"])

    def plan_for(self, device_id: str, now: float = 0.0) -> SlicePlan:
        """The slice this device trains now (planned under its budget and the mode; ``now``
        times the rescoring when ``rescore_every_s`` is set)."""
        record = self.devices[device_id]
        self._refresh_scores(now)
        record.plan = self._plan_budget(self._planning_budget(record), record.turns)
        return record.plan

    def _assign(self, record: DeviceRecord, now: float, sent: TensorDict) -> Assignment | None:
        try:
            plan = self.plan_for(record.device_id, now)
        except BudgetTooSmall as exc:
            record.excluded = str(exc)
            self.strategy.on_dropout(record.device_id)
            self._file(record)
            if self.on_excluded is not None:
                self.on_excluded(record.device_id, record.excluded)
            return None
        state = self.model_state()
        tensors = {}
        for n, v in self.stamps.items():
            if v > record.synced_version:
                if n not in sent:
                    sent[n] = state[n].copy()
                tensors[n] = sent[n]
        assignment = Assignment(
            job=self.config.job,
            device_id=record.device_id,
            assignment_id=f"{record.device_id}.{self._run_tag}.{self._next_assignment}",
            version=self.version,
            trainable=plan.trainable,
            tensors=tensors,
            train=replace(self.config.train, micro_batch=plan.micro_batch),
        )
        self._next_assignment += 1
        record.turns += 1
        record.open = OpenAssignment(
            assignment.assignment_id, self.version, plan.trainable, plan.micro_batch, now
        )
        self._time(record, now)
        record.synced_version = self.version
        return assignment

    def _time(self, record: DeviceRecord, now: float) -> None:
        """Start the timeout of the record's open assignment."""
        assert record.open is not None
        deadline = now + self.settings.assignment_timeout_s
        heapq.heappush(self._deadlines, (deadline, record.device_id, record.open.assignment_id))
        self._file(record)
        # Entries of answered assignments stay in the heap until their deadline; at a few
        # thousand updates a second that is millions of entries per timeout. Compacting when
        # they outnumber the open assignments keeps the heap O(devices training).
        if len(self._deadlines) > 2 * len(self._training) + 64:
            self._deadlines = [e for e in self._deadlines if self._is_open(e[1], e[2])]
            heapq.heapify(self._deadlines)

    def _is_open(self, device_id: str, assignment_id: str) -> bool:
        opened = self.devices[device_id].open
        return opened is not None and opened.assignment_id == assignment_id

    def _planning_budget(self, record: DeviceRecord) -> int:
        if self.config.plan_mode is PlanMode.WEAKEST:
            if self._weakest_budget is None:
                self._weakest_budget = min(d.budget_bytes for d in self.devices.values())
            return self._weakest_budget
        return record.budget_bytes

    def _plan_budget(self, budget: int, turn: int) -> SlicePlan:
        if self.config.plan_mode is PlanMode.FULL:
            return self.planner.full()
        if self.config.plan_mode is PlanMode.FULL_IN_BUDGET:
            return self.planner.full_within(budget)
        floor = budget_class(budget)
        if floor not in self._plans:
            try:
                self._plans[floor] = (
                    self.planner.cover(floor, self._scores)
                    if self.task.validation is None
                    else [self.planner.plan(floor, self._scores)]
                )
            except BudgetTooSmall:
                self._plans[floor] = None
        plans = self._plans[floor]
        # A budget within a class of the smallest slice: planned on its own (rare, uncached).
        if plans is None:
            return self.planner.plan(budget, self._scores)
        return plans[turn % len(plans)]

    def _refresh_scores(self, now: float) -> None:
        # A gradient pass over the validation data (65 ms on digits): at tens of versions
        # a second in the field, every rescore_every versions was a quarter of the
        # orchestrator's CPU per update (docs/benchmarks.md, "Live ingest").
        every_s = self.config.rescore_every_s
        due = self._scores_version < 0 or (
            self.version - self._scores_version >= self.settings.rescore_every
            and (every_s == 0 or now - self._scores_at >= every_s)
        )
        if self.config.plan_mode in (PlanMode.FULL, PlanMode.FULL_IN_BUDGET) or not due:
            return
        validation = self.task.validation
        if validation is None:
            if self._scores:  # sizes never change, nor the plans made of them
                return
            self._scores = size_scores(self.model)
        else:
            self._scores = gradient_scores(self.model, validation, self.task.objective)
        self._scores_version = self.version
        self._scores_at = now
        self._plans.clear()

    # -- updates -----------------------------------------------------------------------

    def ingest(self, device_id: str, payload: bytes) -> Outcome:
        """Decode, validate and apply one device's payload: ``settle(admit(...))``."""
        return self.settle(self.admit(device_id, payload))

    def admit(self, device_id: str, payload: bytes) -> ReceivedUpdate | Refusal:
        """Decode and validate a payload from ``device_id`` without changing any state.

        A driver that must persist an update before it counts (the service's journal)
        does so between ``admit`` and ``settle``.
        """
        record = self.devices.get(device_id)
        if record is None:
            return Refusal(device_id, RejectReason.UNKNOWN_DEVICE, "device never registered")
        expected = expected_buffers = None
        if record.open is not None:
            expected = {n: self.shapes[n] for n in record.open.trainable}
            expected_buffers = self._moved_buffers(record.open)
        try:
            update = decode_update(payload, self.limits, expected, expected_buffers)
        except Rejected as exc:
            return self._undecoded(record, exc)
        return self._admitted(record, update)

    def admit_decoded(self, device_id: str, decoded: Update | Rejected) -> ReceivedUpdate | Refusal:
        """``admit`` for a payload an ingest worker decoded: ``decoded`` is the update, its
        tensors checked against the model's names and shapes, or why it was refused.

        Which of the model's tensors the open assignment asked for is checked here, so the
        two halves are ``admit``'s checks; no state changes.
        """
        record = self.devices.get(device_id)
        if record is None:
            return Refusal(device_id, RejectReason.UNKNOWN_DEVICE, "device never registered")
        if isinstance(decoded, Rejected):
            return self._undecoded(record, decoded)
        if record.open is not None:
            moved = self._moved_buffers(record.open)
            if decoded.buffers.keys() != moved.keys():
                detail = f"buffers {sorted(decoded.buffers)} differ from {sorted(moved)}"
                refused = Rejected(
                    RejectReason.WRONG_SLICE,
                    detail,
                    device_id=decoded.device_id,
                    assignment_id=decoded.assignment_id,
                    update_id=decoded.update_id,
                )
                return self._undecoded(record, refused)
        return self._admitted(record, decoded)

    def _moved_buffers(self, opened: OpenAssignment) -> dict[str, tuple[int, ...]]:
        """The buffers an answer to ``opened`` carries, with their shapes."""
        # Skipped without buffers: admit is on the ingest path's hot loop.
        moved = self.task.model.updated_buffers(opened.trainable) if self.buffers else ()
        return {n: self.shapes[n] for n in moved}

    def _undecoded(self, record: DeviceRecord, exc: Rejected) -> Refusal:
        """The refusal of a payload that did not decode (as an update of this slice)."""
        device_id = record.device_id
        if self._settled(record, exc.device_id, exc.assignment_id, exc.update_id):
            # A resend of the settled answer, checked against the slice now open.
            reason, detail = RejectReason.DUPLICATE, f"update {exc.update_id!r} settled"
            return Refusal(device_id, reason, detail, update_id=exc.update_id)
        answers = self._answers_open(record, exc.device_id, exc.assignment_id)
        return Refusal(
            device_id, exc.reason, exc.detail, answers_open=answers, update_id=exc.update_id
        )

    def _admitted(self, record: DeviceRecord, update: Update) -> ReceivedUpdate | Refusal:
        """A decoded update validated against ``record``'s state, or refused."""
        try:
            return self._validate(record, update)
        except Rejected as exc:
            answers = self._answers_open(record, update.device_id, update.assignment_id)
            return Refusal(
                record.device_id, exc.reason, exc.detail, update, answers, update.update_id
            )

    @staticmethod
    def _settled(
        record: DeviceRecord,
        device_id: str | None,
        assignment_id: str | None,
        update_id: str | None,
    ) -> bool:
        """Whether a payload names the very update that closed ``record``'s last assignment."""
        return (
            device_id == record.device_id
            and assignment_id == record.last_closed
            and update_id is not None
            and update_id == record.last_update
        )

    @staticmethod
    def _answers_open(
        record: DeviceRecord, device_id: str | None, assignment_id: str | None
    ) -> bool:
        """Whether a payload from ``record``'s device claims to answer its open assignment."""
        opened = record.open
        return (
            device_id == record.device_id
            and opened is not None
            and opened.assignment_id == assignment_id
        )

    def settle(self, admitted: ReceivedUpdate | Refusal) -> Outcome:
        """Buffer an admitted update (aggregating when the strategy is ready) or count a
        refusal.

        A refused answer to the device's open assignment frees the device for a fresh one;
        any other refused payload leaves the open assignment alone, so a forged, replayed or
        undecodable message costs the honest device nothing.
        """
        if isinstance(admitted, Refusal):
            self.rejected[admitted.reason.value] += 1
            if admitted.answers_open:
                record = self.devices[admitted.device_id]
                self._close(record, admitted.update_id)
                self.strategy.on_dropout(record.device_id)
            return Outcome(
                accepted=False,
                update=admitted.update,
                reason=admitted.reason,
                aggregation=self.aggregate_if_ready(),
            )
        update = admitted.update
        record = self.devices[update.device_id]
        self.strategy.add(admitted)
        self._close(record, update.update_id)
        self.accepted += 1
        if update.evaluation is not None:
            self.fleet_evaluation.add(update.base_version, update.device_id, update.evaluation)
        return Outcome(
            accepted=True,
            update=admitted.update,
            age=admitted.age,
            aggregation=self.aggregate_if_ready(),
        )

    def _close(self, record: DeviceRecord, update_id: str | None) -> None:
        assert record.open is not None
        record.last_closed = record.open.assignment_id
        record.last_update = update_id
        record.open = None
        self._file(record)

    def aggregate_if_ready(self) -> AggregationReport | None:
        """Apply the buffer if the strategy says so; bump the version."""
        if not self.strategy.ready():
            return None
        batch = self.strategy.buffered()
        report = self.strategy.aggregate(self.params, self.influence)
        changed = aggregate_buffers(self.buffers, batch, self.influence) if self.buffers else ()
        self.version += 1
        for name in (*report.changed, *changed):
            self.stamps[name] = self.version
        return report

    def model_state(self) -> TensorDict:
        """Every tensor of the global model by name: parameters, then buffers (the arrays
        themselves, not copies)."""
        return self.params | self.buffers

    # -- site gateways -----------------------------------------------------------------

    def set_site(self, site: str, devices: Iterable[str]) -> None:
        """Let the gateway of ``site`` answer for ``devices`` with combined updates."""
        self.sites[site] = frozenset(devices)

    def admit_combined(self, site: str, payload: bytes) -> AdmittedCombined | CombinedRefusal:
        """Decode and check a site gateway's combined update without changing any state.

        The orchestrator keeps its authority over what the gateway answers: every member
        must be a device of the site answering its open assignment from the combined
        update's base version (replays and duplicates are refused as from a device), and
        each tensor's weight must be the sum of the sample counts of the members whose
        slice holds it. A combined update is applied whole or not at all: its sums do not
        split.
        """
        if not self.strategy.combines_site_rows:
            detail = f"strategy {self.strategy.name!r} does not take combined updates"
            return CombinedRefusal(site, RejectReason.UNEXPECTED, detail)
        allowed = self.sites.get(site)
        if allowed is None:
            return CombinedRefusal(site, RejectReason.UNKNOWN_DEVICE, "no such site gateway")
        try:
            combined = decode_combined(payload, self.limits, self.shapes)
            if combined.site != site:
                detail = f"site {site!r} sent {combined.site!r}'s combined update"
                raise Rejected(RejectReason.UNKNOWN_DEVICE, detail)
            opened = [self._member_assignment(allowed, m) for m in combined.members]
        except Rejected as exc:
            return CombinedRefusal(site, exc.reason, exc.detail)
        try:
            return AdmittedCombined(self._combined_row(combined, opened), combined.members)
        except Rejected as exc:
            return CombinedRefusal(site, exc.reason, exc.detail, combined.members)

    def _member_assignment(self, allowed: frozenset[str], member: SiteMember) -> OpenAssignment:
        """The open assignment a combined update's member answers (or why it does not)."""
        record = self.devices.get(member.device_id)
        if member.device_id not in allowed or record is None:
            raise Rejected(RejectReason.UNKNOWN_DEVICE, f"{member.device_id} is not of this site")
        if member.assignment_id == record.last_closed:
            reason = RejectReason.REPLAYED
            if member.update_id == record.last_update:
                reason = RejectReason.DUPLICATE
            raise Rejected(reason, f"assignment {member.assignment_id!r} answered")
        assignment = record.open
        if assignment is None or assignment.assignment_id != member.assignment_id:
            raise Rejected(RejectReason.UNEXPECTED, f"no open assignment {member.assignment_id!r}")
        if member.num_samples > self.config.influence.max_samples:
            raise Rejected(RejectReason.MALFORMED, f"{member.device_id}: samples over the cap")
        return assignment

    def _combined_row(
        self, combined: CombinedUpdate, opened: list[OpenAssignment]
    ) -> ReceivedUpdate:
        """The buffer row of a combined update whose members answer ``opened``."""
        weights: dict[str, int] = {}
        for member, assignment in zip(combined.members, opened, strict=True):
            if assignment.version != combined.base_version:
                raise Rejected(RejectReason.MALFORMED, "base version differs from a member's")
            if self.buffers and self.task.model.updated_buffers(assignment.trainable):
                detail = f"{member.device_id}'s slice moves batch-norm statistics"
                raise Rejected(RejectReason.WRONG_SLICE, detail + ", which gateways do not sum")
            for name in assignment.trainable:
                weights[name] = weights.get(name, 0) + member.num_samples
        if weights != combined.weights:
            raise Rejected(RejectReason.WRONG_SLICE, "weights differ from the members' slices")
        age = self.version - combined.base_version
        if age > self.settings.max_staleness:
            raise Rejected(RejectReason.TOO_STALE, f"age {age} > {self.settings.max_staleness}")
        delta = {n: (s / weights[n]).astype(np.float32) for n, s in combined.sums.items()}
        # Each member's delta was clipped to at most max_delta_rms per tensor at the
        # gateway, so their weighted mean is too (a norm is convex): a larger one was not
        # bounded there. The slack covers the rounding of int8 sums (1/254 of a tensor's
        # largest value per coordinate).
        limit = self.config.influence.max_delta_rms * 1.05
        for name, mean in delta.items():
            if float(np.sqrt(np.mean(np.square(mean, dtype=np.float64)))) > limit:
                raise Rejected(RejectReason.MALFORMED, f"{name!r} moves more than any bound")
        row = Update(
            device_id=combined.site,
            update_id=combined.combined_id,
            assignment_id=combined.combined_id,
            base_version=combined.base_version,
            num_samples=sum(m.num_samples for m in combined.members),
            loss=combined.loss,
            peak_mem_bytes=0,
            delta=delta,
        )
        return ReceivedUpdate(row, age, dict(weights), len(combined.members))

    def ingest_combined(self, site: str, payload: bytes) -> Outcome:
        """Decode, check and apply a site's combined update: ``settle_combined(admit_...)``."""
        return self.settle_combined(self.admit_combined(site, payload))

    def settle_combined(self, admitted: AdmittedCombined | CombinedRefusal) -> Outcome:
        """Buffer an admitted combined update and close its members' assignments, or count
        a refusal and free the members whose answers it held (as a refused answer does)."""
        if isinstance(admitted, CombinedRefusal):
            self.rejected[admitted.reason.value] += 1
            for member in admitted.frees:
                self._close(self.devices[member.device_id], member.update_id)
                self.strategy.on_dropout(member.device_id)
            return Outcome(False, reason=admitted.reason, aggregation=self.aggregate_if_ready())
        self.strategy.add(admitted.row)
        for member in admitted.members:
            self._close(self.devices[member.device_id], member.update_id)
        self.accepted += len(admitted.members)
        row = admitted.row
        return Outcome(True, row.update, row.age, aggregation=self.aggregate_if_ready())

    def _validate(self, record: DeviceRecord, update: Update) -> ReceivedUpdate:
        if update.device_id != record.device_id:
            raise Rejected(
                RejectReason.UNKNOWN_DEVICE, f"{record.device_id} sent {update.device_id}'s update"
            )
        if update.assignment_id == record.last_closed:
            if self._settled(record, update.device_id, update.assignment_id, update.update_id):
                raise Rejected(RejectReason.DUPLICATE, f"update {update.update_id!r} settled")
            raise Rejected(RejectReason.REPLAYED, f"assignment {update.assignment_id!r} answered")
        assignment = record.open
        if assignment is None or assignment.assignment_id != update.assignment_id:
            raise Rejected(RejectReason.UNEXPECTED, f"no open assignment {update.assignment_id!r}")
        if update.base_version != assignment.version:
            raise Rejected(RejectReason.MALFORMED, "base version differs from the assignment's")
        # Shapes and finiteness were checked by the decoder against this very slice (admit
        # passes the open assignment's shapes), so they are not checked twice.
        if set(update.delta) != set(assignment.trainable):
            raise Rejected(RejectReason.WRONG_SLICE, "delta tensors differ from the assignment")
        check_buffers(update.buffers)
        age = self.version - update.base_version
        if age > self.settings.max_staleness:
            raise Rejected(RejectReason.TOO_STALE, f"age {age} > {self.settings.max_staleness}")
        return ReceivedUpdate(update=update, age=age)

    # -- state -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything a restart needs, as msgpack-able values and numpy arrays.

        Its size is O(model + devices + buffer): replay protection keeps one assignment id
        per device, not every update id ever seen.
        """
        return {
            "format": STATE_FORMAT,
            "job": self.config.job,
            "version": self.version,
            "params": dict(self.params),
            "buffers": dict(self.buffers),
            "stamps": dict(self.stamps),
            "accepted": self.accepted,
            "rejected": dict(self.rejected),
            "next_assignment": self._next_assignment,
            "run_tag": self._run_tag,
            "devices": [_record_state(d) for d in self.devices.values()],
            "strategy": self.strategy.state_dict(),
            "influence": self.influence.state_dict(),
            "fleet_evaluation": self.fleet_evaluation.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], now: float) -> None:
        """Continue from ``state_dict``; open assignments get a fresh timeout from ``now``
        (their devices may have lost them while we were away)."""
        if state["format"] != STATE_FORMAT:
            raise ValueError(
                f"state format {state['format']} is not {STATE_FORMAT}: start a new run folder"
            )
        if state["job"] != self.config.job:
            raise ValueError(f"state belongs to job {state['job']!r}, not {self.config.job!r}")
        for name, arr in self.params.items():
            arr[...] = state["params"][name]
        for name, arr in self.buffers.items():
            arr[...] = state["buffers"][name]
        self.version = int(state["version"])
        self.stamps.update(state["stamps"])
        self.accepted = int(state["accepted"])
        self.rejected = Counter(state["rejected"])
        self._next_assignment = int(state["next_assignment"])
        self._run_tag = str(state["run_tag"])
        self.devices, self._order, self._weakest_budget = {}, {}, None
        self._idle, self._training, self._deadlines = set(), set(), []
        for saved in state["devices"]:
            record = DeviceRecord(
                device_id=saved["device_id"],
                budget_bytes=saved["budget_bytes"],
                online=saved["online"],
                synced_version=saved["synced_version"],
                last_closed=saved["last_closed"],
                last_update=saved.get("last_update"),  # absent from older checkpoints
                excluded=saved["excluded"],
                turns=saved["turns"],
            )
            self.devices[record.device_id] = record
            self._order[record.device_id] = len(self._order)
            opened = saved["open"]
            if opened is None:
                self._file(record)
            else:
                record.open = OpenAssignment.restored(opened, now)
                self._time(record, now)
        self.strategy.load_state_dict(state["strategy"])
        self.influence.load_state_dict(state["influence"])
        self.fleet_evaluation.load_state_dict(state["fleet_evaluation"])
        self._scores_version = -1  # rescore the restored model before planning

    # -- evaluation --------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """The objective's metrics of the global model on the task's validation data; empty
        without a validation set (the fleet's own measure is ``fleet_evaluation``)."""
        val = self.task.validation
        if val is None:
            return {}
        with torch.no_grad():
            outputs = self.model(torch.from_numpy(val.x)).numpy()
        return self.task.objective.metrics(outputs, val)


def _record_state(d: DeviceRecord) -> dict[str, Any]:
    return {
        "device_id": d.device_id,
        "budget_bytes": d.budget_bytes,
        "online": d.online,
        "synced_version": d.synced_version,
        "last_closed": d.last_closed,
        "last_update": d.last_update,
        "excluded": d.excluded,
        "turns": d.turns,
        "open": None if d.open is None else d.open.saved(),
    }
