"""The orchestrator service: the training engine behind MQTT.

One worker thread owns all state. paho's network thread only queues messages; the worker
takes what waits in the inbox as a batch, hands each payload and the time to the engine
(``TrainingServer``), writes each admitted update to the journal before it counts, opens
assignments for idle devices and journals their record, makes all of it durable with one
fsync (group commit), then acknowledges the batch to the broker, tells each device so on
its ack topic (the agent keeps the update until then: a PUBACK is not delivery) and sends
the assignments. Evaluation and checkpoints run every few versions or seconds (the job's
``evaluate_every*`` and ``checkpoint_every*``), not after every aggregation; the service
publishes the retained job state. An assignment a broker crash lost is sent again,
unchanged, when the device's live birth does not name it or when the orchestrator itself
reconnects, so no one waits for the assignment timeout; overflowing broker queues are
counted from Mosquitto's ``$SYS`` counter.
Every message passes one boundary: whatever happens while handling it, it is acknowledged,
and a failure is counted by kind and the payload set aside in a bounded quarantine, so no
payload can stop the orchestrator, now or when the journal is replayed after a restart.
Telemetry is handed to a batching writer and never waits on the database.

The broker makes the username the client id, so the service's MQTT session is the fleet's
one orchestrator session. A job that starts fresh (nothing in its run folder) discards at
its first connect whatever an earlier job left there (subscriptions, queued updates that
answer that job's assignments); a resumed job takes the session over with the updates
queued while it was down.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np
from paho.mqtt.client import MQTTMessageInfo
from paho.mqtt.subscribeoptions import SubscribeOptions

from ftte import topics
from ftte.errors import Rejected, RejectReason
from ftte.tasks import load_task
from ftte.transport.mqtt import BrokerDrops, Inbound, MqttLink, PayloadTooLarge, Will
from ftte.wire import ModelForms, encode_assignment
from ftte.wire.control import (
    GONE,
    HEARTBEAT_S,
    MAX_EXCLUDED_LISTED,
    MAX_REASON_CHARS,
    DeviceStatus,
    JobState,
    UpdateAck,
    Verdict,
    decode_status,
)
from ftte.wire.messages import Assignment, Release
from orchestrator.cadence import Cadence
from orchestrator.checkpoint import DISPATCH, Journal, decode_dispatch, load_state, save_state
from orchestrator.config import JobConfig, TargetOn
from orchestrator.evaluation import FleetMetrics
from orchestrator.ingest.handoff import decode_handoff
from orchestrator.ingest.workers import IngestWorkers
from orchestrator.presets import make_server
from orchestrator.quarantine import Quarantine
from orchestrator.releases import ReleaseStore
from orchestrator.server import AdmittedCombined, CombinedRefusal, Outcome, Refusal
from orchestrator.strategies.base import AggregationReport, ReceivedUpdate
from orchestrator.telemetry import open_telemetry

log = logging.getLogger("ftte.orchestrator")

# Assignments sent again or withdrawn for one device between two of its answers. A broker
# crash costs one or two; a device that floods births cannot make the orchestrator send it
# assignments without end (past this it waits for the assignment timeout like before).
MAX_RECOVERIES = 5
# Messages handled per journal fsync (group commit). Their acknowledgements wait for the
# batch: a few hundred updates are handled in tens of milliseconds, one fsync takes ~1 ms.
MAX_BATCH = 256
HISTORY_POINTS = 10_000  # (wall s, version, primary metric) kept for the demo's plot
PROGRESS_S = 10.0  # how often the log says where the job stands
RETAINED_UPDATE = "update_retained"  # refusal reason: a retained publish on an update topic
# No local: the clear of a retained update is not echoed back. Retain as published: a live
# retained publish is told from a normal one. Retained messages only for a new subscription:
# a resumed session gets what was published meanwhile from its queue, not a second time.
UPDATE_SUBSCRIPTION = SubscribeOptions(
    qos=1,
    noLocal=True,
    retainAsPublished=True,
    retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB,
)


@dataclass(frozen=True)
class SentAssignment:
    """An open assignment's payload as sent, kept to send it again unchanged."""

    assignment_id: str
    payload: bytes
    # The oldest model a device may hold for the payload to be complete: every tensor left
    # out had last changed by this version. A device holding less gets a fresh assignment.
    needs_version: int


@dataclass(frozen=True)
class JobResult:
    """How a job ended."""

    version: int
    metrics: dict[str, float]  # what the stop rule read last (validation or fleet)
    reached_target: bool
    wall_time_s: float


class OrchestratorService:
    """Runs one training job against the fleet's broker."""

    def __init__(self, config: JobConfig) -> None:
        self.config = config
        job = config.job
        task = load_task(job.task, num_devices=job.num_partitions, seed=job.seed)
        self.target = job.stop_target(task)
        self.objective = task.objective
        self.server = make_server(
            job.strategy,
            task,
            job=job.name,
            seed=job.seed,
            train=config.train,
            settings=config.server,
            influence=config.influence,
            strategy_params=config.strategy,
            rescore_every_s=job.rescore_every_s,
        )
        self.run_dir = job.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = load_state(self.run_dir)
        self.resumed = state is not None
        if state is not None:
            self.server.load_state_dict(state, time.monotonic())
            log.info(
                "resumed from checkpoint at version %d with %d accepted updates",
                self.server.version,
                self.server.accepted,
            )
        self.journal = Journal(self.run_dir)
        self.quarantine = Quarantine(self.run_dir / "quarantine")
        self.failures: Counter[str] = Counter()  # handler failures, by exception type
        self.status_refused: Counter[str] = Counter()  # refused status messages, by reason
        # Acknowledgements by verdict, assignments sent again or withdrawn, broker drops.
        self.delivery: Counter[str] = Counter()
        self._sent: dict[str, SentAssignment] = {}  # by device: its open assignment as sent
        self._model_forms = ModelForms()  # the model's tensors converted once per version
        self._recoveries: Counter[str] = Counter()  # by device, since its last answer
        self._connects_seen = 0
        self._staged = 0  # journal entries of this batch not yet synced
        self._acks: list[tuple[str, UpdateAck]] = []  # to publish once the batch is durable
        self.broker_drops = BrokerDrops()
        self.retained_updates = 0  # retained publishes on update topics, ignored and cleared
        self.telemetry = open_telemetry(job.fleet, job.name, config.influx, self.run_dir)
        self.server.on_excluded = self._excluded
        for site, devices in config.sites.items():
            self.server.set_site(site, devices)
        self.releases = ReleaseStore.for_objective(
            self.run_dir / "releases", self.objective, keep=job.keep_releases
        )
        self.rng = np.random.default_rng(job.seed + self.server.version)
        self.metrics = self.server.evaluate()  # on the validation set; {} without one
        now = time.monotonic()
        version = self.server.version
        self._evaluation = Cadence(job.evaluate_every, job.evaluate_every_s, version, now)
        self._checkpoints = Cadence(job.checkpoint_every, job.checkpoint_every_s, version, now)
        # The newest aggregation while its version is not evaluated: its telemetry point
        # waits for the evaluation (or goes out without it once a newer version supersedes it).
        self._unevaluated: AggregationReport | None = None
        self._replaying = False
        self._fleet_reported = -1  # the version whose fleet metrics telemetry has
        self._started = time.monotonic()
        self.history: deque[tuple[float, int, float]] = deque(maxlen=HISTORY_POINTS)
        # With ingest workers, updates arrive decoded on the hand-off topic instead.
        self._handoff_topic = topics.ingest_topic(job.fleet)
        self.handed_off: Counter[str] = Counter()  # hand-offs received, by worker
        self.workers: IngestWorkers | None = None
        updates: tuple[str, int | SubscribeOptions]
        updates = (topics.all_updates_filter(job.fleet), UPDATE_SUBSCRIPTION)
        if config.ingest.workers:
            self.workers = self._ingest_workers()
            updates = (self._handoff_topic, 1)
        self.link = MqttLink(
            config.broker,
            subscriptions=[
                (topics.all_status_filter(job.fleet), 1),
                updates,
                (topics.BROKER_DROPPED, 0),
                *(
                    [(topics.all_combined_filter(job.fleet), UPDATE_SUBSCRIPTION)]
                    if config.sites
                    else []
                ),
            ],
            manual_ack=True,
            fresh_session=state is None and self.journal.is_empty(),
            # A dead orchestrator is told apart at once from a quiet one: the broker
            # publishes this (retained) when the connection dies without a goodbye.
            will=Will(topics.model_topic(job.fleet), self.job_state(GONE).encode()),
        )
        self._replay_journal()

    def _ingest_workers(self) -> IngestWorkers:
        """The worker processes ``[ingest]`` asks for, told the model's shapes."""
        server = self.server
        return IngestWorkers(
            self.config.ingest,
            self.config.job.fleet,
            {n: tuple(a.shape) for n, a in server.params.items()},
            {n: tuple(a.shape) for n, a in server.buffers.items()},
            self.run_dir / "ingest",
            server.limits,
        )

    def run(self, stop: threading.Event) -> JobResult:
        """Serve the fleet until the target, a limit, or ``stop``; publish the final state."""
        if self.workers is not None:
            self.workers.start()  # subscribed before any device can be assigned work
        started = self._started = time.monotonic()
        self.link.start()
        job = self.config.job
        last_state = 0.0
        last_progress = started - PROGRESS_S  # the first line at once: nothing is silent
        try:
            while not stop.is_set() and not self.reached_target():
                if self.server.version >= job.max_versions:
                    break
                if time.monotonic() - started > job.max_wall_s:
                    log.warning("job wall-time limit of %.0f s reached", job.max_wall_s)
                    break
                batch = self._next_batch()
                self._expire_overdue()
                if self.link.connects != self._connects_seen:
                    self._reconnected()
                self.handle_batch(batch)
                self._evaluate_if_due()
                self._checkpoint_if_due()
                if self.workers is not None:
                    self.workers.supervise()
                heartbeat_due = time.monotonic() - last_state > HEARTBEAT_S
                if heartbeat_due and self.link.connected.is_set():
                    self._publish_state("running")
                    last_state = time.monotonic()
                if time.monotonic() - last_progress > PROGRESS_S:
                    self._log_progress()
                    last_progress = time.monotonic()
            self._finish()
        finally:
            self.link.stop()
            if self.workers is not None:
                self.workers.stop()
            self.telemetry.close()
            self.journal.close()
        return JobResult(
            self.server.version, self.measure(), self.reached_target(), time.monotonic() - started
        )

    def _log_progress(self) -> None:
        """Where the job stands, also before the first aggregation (devices coming online)."""
        server = self.server
        log.info(
            "version %d, %s: %d devices online, %d training, %d idle, %d excluded, "
            "%d updates buffered, %d accepted%s",
            server.version,
            self._measured(),
            server.devices_online(),
            server.in_flight(),
            len(server.idle_devices()),
            len(server.excluded_devices()),
            len(server.strategy.buffered()),
            server.accepted,
            "" if self.link.connected.is_set() else " (broker not connected)",
        )
        if self.workers is not None and self.workers.alive() < len(self.workers.specs):
            log.warning(
                "%d of %d ingest workers serving (restarts so far: %s)",
                self.workers.alive(),
                len(self.workers.specs),
                self.workers.restarts,
            )

    def reached_target(self) -> bool:
        """Whether the global model has reached the job's target of the objective's primary
        metric (in its direction), measured where ``target_on`` says."""
        value = self.measure().get(self.objective.primary)
        return value is not None and self.objective.reached(value, self.target)

    def measure(self) -> dict[str, float]:
        """The metrics the stop rule reads: the validation set's or the fleet's."""
        if self.config.job.target_on is TargetOn.VALIDATION:
            return self.metrics
        return self._fleet_metrics()

    def _fleet_metrics(self) -> dict[str, float]:
        fleet = self.server.fleet_evaluation.latest(self.config.job.fleet_min_devices)
        return {} if fleet is None else fleet.metrics

    def _measured(self) -> str:
        """The stop rule's metric now and the target, for the log."""
        value = self.measure().get(self.objective.primary)
        now = "not measured yet" if value is None else f"{value:.4g}"
        where = self.config.job.target_on.value
        return f"{self.objective.primary} ({where}) {now}, target {self.target:g}"

    # -- messages ----------------------------------------------------------------------

    def _next_batch(self) -> list[Inbound]:
        """What waits in the inbox, up to ``MAX_BATCH`` messages (waiting briefly for one)."""
        try:
            batch = [self.link.inbox.get(timeout=0.2)]
        except queue.Empty:
            return []
        while len(batch) < MAX_BATCH:
            try:
                batch.append(self.link.inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def handle(self, message: Inbound) -> None:
        """Process one message behind the boundary: it is acknowledged whatever happens."""
        self.handle_batch([message])

    def handle_batch(self, messages: list[Inbound]) -> None:
        """Process messages behind the boundary and, when connected, open assignments for
        idle devices; then make the journal entries of both durable with one fsync (group
        commit); then acknowledge every message, to the devices on their ack topics and to
        the broker, and send the assignments. Each message is acknowledged whatever happens
        to it."""
        for message in messages:
            try:
                self._dispatch_message(
                    message.topic, message.payload, journal=True, retained=message.retain
                )
            except Exception as exc:  # one message, whatever it raised, must not stop us
                self._set_aside(message.topic, message.payload, exc)
        opened = self._open_assignments() if self.link.connected.is_set() else []
        durable = True
        if self._staged:
            self._staged = 0
            try:
                self.journal.sync()
            except OSError as exc:  # the disk failed: no "journaled" may go out
                durable = False
                self.failures[type(exc).__name__] += 1
                log.error("journal sync failed (%s); the batch's updates are not acknowledged", exc)
        acks, self._acks = self._acks, []
        for device_id, ack in acks:
            if durable or ack.verdict is not Verdict.JOURNALED:
                self._publish_ack(device_id, ack)
        for message in messages:
            self.link.ack(message)
        self._send_assignments(opened, durable)

    def _set_aside(self, topic: str, payload: bytes, exc: Exception) -> None:
        kind = type(exc).__name__
        self.failures[kind] += 1
        log.error("handling a message on %s failed (%s: %s); set aside", topic, kind, exc)
        self.quarantine.put(topic, payload, "handler_error", f"{kind}: {exc}")

    def _dispatch_message(
        self, topic: str, payload: bytes, journal: bool, retained: bool = False
    ) -> None:
        """Route one message; ``journal`` is false on replay; ``retained``: delivered from the
        broker's retained store (an old birth), or a live retained publish on an update topic."""
        if topic == topics.BROKER_DROPPED:
            self._note_broker_drops(payload)
            return
        if topic == self._handoff_topic:
            self._receive_handoff(payload, journal)
            return
        try:
            site = topics.parse_combined(topic)
            if site is not None:
                self._receive_combined(site, topic, payload, journal)
                return
            ref = topics.parse(topic)
        except ValueError:
            return
        if ref.device is None:
            return
        if ref.kind == "status":
            self._handle_status(ref.device, payload, retained)
        elif ref.kind == "update" and retained:
            self._refuse_retained(ref.device, topic, payload)
        elif ref.kind == "update":
            self._receive(ref.device, topic, payload, journal)

    def _refuse_retained(self, device_id: str, topic: str, payload: bytes) -> None:
        """Ignore a retained update and clear it: the broker would replay it to every new
        subscriber, e.g. each restart of this service. Agents never retain updates."""
        self.retained_updates += 1
        log.warning("retained update from %s ignored and cleared from the broker", device_id)
        if payload:  # a zero-length retained publish is itself MQTT's clear: nothing is kept
            self.link.publish(topic, b"", qos=1, retain=True)
        self.quarantine.put(topic, payload, RETAINED_UPDATE, "retained publish on an update topic")
        self.telemetry.update(
            device=device_id,
            update_id="",
            age=0,
            weight=None,
            bytes_=len(payload),
            loss=float("nan"),
            accepted=False,
            reason=RETAINED_UPDATE,
            peak_mem_bytes=0,
        )

    def _handle_status(self, device_id: str, payload: bytes, retained: bool) -> None:
        try:
            status = decode_status(payload)
        except Rejected as exc:
            self.status_refused[exc.reason.value] += 1
            log.warning("bad status from %s: %s", device_id, exc)
            return
        if status is None:
            self._after(self.server.set_offline(device_id))
            self.telemetry.device_status(device=device_id, online=False, budget_bytes=None)
            return
        if status.device_id != device_id:
            log.warning("status on %s names %s; ignored", device_id, status.device_id)
            return
        self.server.register(
            device_id, status.memory_budget_bytes, status.model_version, status.model_job
        )
        self.telemetry.device_status(
            device=device_id, online=True, budget_bytes=status.memory_budget_bytes
        )
        # Only a live birth says what the device holds now; a retained one may be old.
        if not retained and status.assignments is not None:
            self._check_held(status)

    def _excluded(self, device_id: str, reason: str) -> None:
        log.warning("%s cannot take part: %s", device_id, reason)
        self.telemetry.device_excluded(device=device_id, reason=reason)

    def _check_held(self, status: DeviceStatus) -> None:
        """A device just (re)connected: an open assignment it does not hold was lost."""
        device_id = status.device_id
        opened = self.server.open_assignment(device_id)
        if opened is None or opened.assignment_id in (status.assignments or ()):
            return
        log.info("%s reconnected without %s", device_id, opened.assignment_id)
        self._send_again(device_id, opened.assignment_id, status.model_version)

    def _receive(self, device_id: str, topic: str, payload: bytes, journal: bool) -> None:
        """Admit, journal (if it will count) and acknowledge, settle; telemetry for either
        fate. On replay (``journal`` false) nothing is acknowledged: the agent sends it
        again and is told it is a duplicate."""
        admitted = self.server.admit(device_id, payload)
        self._settle_received(device_id, topic, payload, admitted, journal, (topic, payload))

    def _receive_handoff(self, payload: bytes, journal: bool) -> None:
        """An update an ingest worker decoded (or refused): admitted and settled as if it had
        come from the device, and journaled in the hand-off's form (replay reads it so)."""
        handoff = decode_handoff(payload)
        self.handed_off[handoff.worker] += 1
        device = handoff.device
        topic = topics.update_topic(self.config.job.fleet, device)
        original = handoff.payload or b""
        if handoff.retained:
            self._refuse_retained(device, topic, original)
            return
        admitted = self.server.admit_decoded(device, handoff.decoded)
        entry = (self._handoff_topic, payload)
        self._settle_received(device, topic, original, admitted, journal, entry, handoff.size)

    def _settle_received(
        self,
        device_id: str,
        topic: str,
        payload: bytes,
        admitted: ReceivedUpdate | Refusal,
        journal: bool,
        entry: tuple[str, bytes],
        size: int | None = None,
    ) -> None:
        """Journal (``entry``, if it will count) and acknowledge, settle; telemetry for either
        fate. ``payload``: the device's bytes, kept in the quarantine if they did not decode;
        ``size``: how many the device sent (default: ``payload``'s)."""
        duplicate = isinstance(admitted, Refusal) and admitted.reason is RejectReason.DUPLICATE
        if isinstance(admitted, Refusal) and admitted.update is None and not duplicate:
            # Not even decodable: keep a copy for whoever investigates the device.
            self.quarantine.put(topic, payload, admitted.reason.value, admitted.detail)
        if journal and not isinstance(admitted, Refusal):
            # Durable before anything is acknowledged: the batch's sync comes first.
            self.journal.stage(*entry)
            self._staged += 1
            self._acknowledge(device_id, admitted.update.update_id, Verdict.JOURNALED)
            self._recoveries.pop(device_id, None)
        outcome = self.server.settle(admitted)
        if journal and isinstance(admitted, Refusal) and admitted.update_id is not None:
            # Settled either way: resending cannot change it, so the agent may forget it.
            if duplicate:
                self._acknowledge(device_id, admitted.update_id, Verdict.DUPLICATE)
            else:
                reason = admitted.reason.value
                self._acknowledge(device_id, admitted.update_id, Verdict.REFUSED, reason)
        self._update_point(device_id, outcome, len(payload) if size is None else size)
        self._after(outcome.aggregation)

    def _receive_combined(self, site: str, topic: str, payload: bytes, journal: bool) -> None:
        """A site gateway's combined update: admitted, journaled and each member's update
        acknowledged as journaled, or refused (quarantined, each freed member told)."""
        admitted: AdmittedCombined | CombinedRefusal = self.server.admit_combined(site, payload)
        if isinstance(admitted, CombinedRefusal):
            log.warning("combined update from site %s refused: %s", site, admitted.detail)
            self.quarantine.put(topic, payload, admitted.reason.value, admitted.detail)
            for member in admitted.frees if journal else ():
                reason = admitted.reason.value
                self._acknowledge(member.device_id, member.update_id, Verdict.REFUSED, reason)
        elif journal:
            self.journal.stage(topic, payload)
            self._staged += 1
            for member in admitted.members:
                self._acknowledge(member.device_id, member.update_id, Verdict.JOURNALED)
                self._recoveries.pop(member.device_id, None)
        self._after(self.server.settle_combined(admitted).aggregation)

    def _acknowledge(
        self, device_id: str, update_id: str, verdict: Verdict, reason: str = ""
    ) -> None:
        """Queue telling the device its update is settled: sent once the batch is durable."""
        self._acks.append((device_id, UpdateAck(update_id, verdict, reason)))

    def _publish_ack(self, device_id: str, ack: UpdateAck) -> None:
        """Tell the device its update is settled (QoS 1; its resend is acknowledged again)."""
        topic = topics.ack_topic(self.config.job.fleet, device_id)
        self.link.publish(topic, ack.encode(), qos=1)
        self.delivery[f"ack_{ack.verdict.value}"] += 1

    def _note_broker_drops(self, payload: bytes) -> None:
        try:
            dropped = self.broker_drops.note(payload)
        except ValueError as exc:
            log.warning("%s", exc)
            return
        if dropped:
            self.delivery["broker_dropped"] += dropped
            log.warning(
                "the broker dropped %d messages from a full queue; agents send what is not "
                "acknowledged again (%d since this orchestrator started)",
                dropped,
                self.delivery["broker_dropped"],
            )

    def _update_point(self, device: str, outcome: Outcome, size: int) -> None:
        update = outcome.update
        weight = None
        if update is not None and outcome.aggregation is not None:
            weight = outcome.aggregation.weights.get(update.update_id)
        self.telemetry.update(
            device=device,
            update_id="" if update is None else update.update_id,
            age=outcome.age,
            weight=weight,
            bytes_=size,
            loss=float("nan") if update is None else update.loss,
            accepted=outcome.accepted,
            reason=None if outcome.reason is None else outcome.reason.value,
            peak_mem_bytes=0 if update is None else update.peak_mem_bytes,
            process=None if update is None else update.process,
        )

    def _after(self, report: AggregationReport | None) -> None:
        """After an aggregation: telemetry, and the evaluation if one is due (not on replay)."""
        if report is None:
            return
        if self._unevaluated is not None:  # superseded before it was evaluated
            self._aggregation_point(self._unevaluated, self.server.version - 1, None)
        self._unevaluated = report
        fleet = self.server.fleet_evaluation.latest(self.config.job.fleet_min_devices)
        if fleet is not None and fleet.version != self._fleet_reported:
            self._fleet_reported = fleet.version
            self.telemetry.fleet_evaluation(
                version=fleet.version, devices=fleet.devices, metrics=fleet.metrics
            )
        if not self._replaying:
            self._evaluate_if_due()

    def _evaluate_if_due(self) -> None:
        if self._evaluation.due(self.server.version, time.monotonic()):
            self._evaluate()

    def _evaluate(self) -> None:
        """Evaluate the current version: the stop rule, history, release and telemetry."""
        started = time.monotonic()
        self.metrics = self.server.evaluate()
        self._evaluation.ran(self.server.version, started)
        value = self.measure().get(self.objective.primary)
        if value is not None:
            self.history.append((started - self._started, self.server.version, value))
        if not self._replaying:
            self._release(only_if_best=True)
        if self._unevaluated is not None:
            self._aggregation_point(
                self._unevaluated, self.server.version, time.monotonic() - started
            )
            self._unevaluated = None
        log.info("version %d: %s", self.server.version, self._measured())

    def _aggregation_point(
        self, report: AggregationReport, version: int, evaluated_s: float | None
    ) -> None:
        """Telemetry of one aggregation; the validation metrics only if it was evaluated
        (``evaluated_s``: how long its evaluation and release took)."""
        self.telemetry.aggregation(
            version=version,
            buffer_fill=len(self.server.strategy.buffered()),
            num_updates=len(report.weights),
            clipped=len(report.clipped),
            capped=len(report.capped),
            merged=len(report.merged),
            screened=len(report.screened),
            validation={} if evaluated_s is None else self.metrics,
            wall_time_s=evaluated_s or 0.0,
        )

    def _checkpoint_if_due(self) -> None:
        if self._checkpoints.due(self.server.version, time.monotonic()):
            self._checkpoint()

    def _checkpoint(self) -> None:
        save_state(self.run_dir, self.server.state_dict())
        self.journal.truncate()
        self._checkpoints.ran(self.server.version, time.monotonic())

    def _release(self, only_if_best: bool = False) -> None:
        """Keep the model as it is now as a release: a new best, or the job's last.

        Its metrics are the validation set's when the task has one, else the fleet's newest
        measure (of a version at most a few aggregations older than the model kept); with
        neither yet there is nothing to compare, and nothing is kept.
        """
        server = self.server
        metrics = self.metrics if server.task.validation is not None else self._fleet_metrics()
        primary = self.objective.primary
        if primary not in metrics:
            return
        release = Release(
            self.config.job.name,
            server.version,
            server.task.model.name,
            metrics,
            server.model_state(),
            time.time(),
        )
        by_device = {}
        if server.task.validation is None:
            fleet = server.fleet_evaluation.latest(self.config.job.fleet_min_devices)
            by_device = {} if fleet is None else fleet.by_device_of(primary)
        if only_if_best:
            stored = self.releases.keep_if_best(release, by_device)
        else:
            stored = self.releases.offer(release, by_device)
        if stored is not None:
            log.info(
                "release of version %d kept (%s %.4g)", stored.version, primary, metrics[primary]
            )

    def _replay_journal(self) -> None:
        """After a crash: re-apply updates acknowledged since the last checkpoint."""
        replayed = 0
        # No checkpoint until every entry is re-applied: truncating the journal halfway
        # would lose the rest if we crashed again.
        self._replaying = True
        now = time.monotonic()
        entries = list(self.journal.entries())
        for topic, payload in entries:
            try:
                if topic == DISPATCH:
                    self.server.replay_dispatch(decode_dispatch(payload), now)
                else:
                    replayed += 1
                    self._dispatch_message(topic, payload, journal=False)
            except Exception as exc:  # the same boundary as for live messages
                self._set_aside(topic, payload, exc)
        self._replaying = False
        if entries:
            if self._unevaluated is not None:
                self._evaluate()
            self._checkpoint()
            log.info(
                "replayed %d journaled updates: now at version %d with %d accepted updates",
                replayed,
                self.server.version,
                self.server.accepted,
            )

    # -- dispatch ----------------------------------------------------------------------

    def _open_assignments(self) -> list[Assignment]:
        """Open assignments for the devices the strategy starts now, and journal their record
        (durable with the batch's fsync, before they are sent: after a crash, answers to them
        must still be accepted)."""
        assignments = self.server.dispatch(self.rng, time.monotonic())
        if assignments:
            self.journal.stage_dispatch(self.server.dispatch_record(assignments))
            self._staged += 1
        return assignments

    def _send_assignments(self, assignments: list[Assignment], durable: bool) -> None:
        """Send opened assignments, or, if their record could not be made durable, take them
        back (the devices are idle again and get fresh ones once the disk works)."""
        if not durable:
            for assignment in assignments:
                self._after(self.server.withdraw(assignment.device_id))
            return
        fleet = self.config.job.fleet
        timeout = int(self.config.server.assignment_timeout_s)
        for assignment in assignments:
            encoding = self.server.config.model_encoding
            payload = encode_assignment(assignment, encoding, forms=self._model_forms)
            try:
                self.link.publish(
                    topics.assign_topic(fleet, assignment.device_id),
                    payload,
                    qos=1,
                    expiry_s=timeout,
                )
            except PayloadTooLarge as exc:
                log.error("cannot send assignment: %s", exc)
                self._after(self.server.withdraw(assignment.device_id))
                continue
            self._sent[assignment.device_id] = SentAssignment(
                assignment.assignment_id, payload, self._needs_version(assignment)
            )
        # One entry per device that was ever sent work; keep those still open when they
        # outnumber the devices training, so memory stays O(devices training).
        if len(self._sent) > 2 * self.server.in_flight() + 64:
            self._sent = {d: s for d, s in self._sent.items() if self._still_open(d, s)}

    def _needs_version(self, assignment: Assignment) -> int:
        stamps = self.server.stamps
        left_out = (v for name, v in stamps.items() if name not in assignment.tensors)
        return max(left_out, default=-1)

    def _still_open(self, device_id: str, sent: SentAssignment) -> bool:
        opened = self.server.open_assignment(device_id)
        return opened is not None and opened.assignment_id == sent.assignment_id

    def _send_again(self, device_id: str, assignment_id: str, model_version: int) -> None:
        """Send an open assignment again unchanged, or, if its payload is not kept (this
        process did not send it) or lacks tensors the device no longer holds, withdraw it
        so the device gets a fresh one at the next dispatch."""
        if self._recoveries[device_id] >= MAX_RECOVERIES:
            self.delivery["recoveries_capped"] += 1
            log.warning("%s: no more recoveries before it answers; the timeout applies", device_id)
            return
        self._recoveries[device_id] += 1
        sent = self._sent.get(device_id)
        if (
            sent is not None
            and sent.assignment_id == assignment_id
            and model_version >= sent.needs_version
        ):
            timeout = int(self.config.server.assignment_timeout_s)
            topic = topics.assign_topic(self.config.job.fleet, device_id)
            self.link.publish(topic, sent.payload, qos=1, expiry_s=timeout)
            self.delivery["assignments_resent"] += 1
            return
        self.delivery["assignments_withdrawn"] += 1
        self._after(self.server.withdraw(device_id))

    def _reconnected(self) -> None:
        """After our own reconnect: a broker restarted from an older save may have lost
        assignments in flight; send every open one again (a device trains it once)."""
        first = self._connects_seen == 0
        self._connects_seen = self.link.connects
        if first:
            return
        log.info("reconnected to the broker: sending open assignments again")
        for device_id, sent in list(self._sent.items()):
            if self._still_open(device_id, sent):
                held = self.server.devices[device_id].synced_version
                self._send_again(device_id, sent.assignment_id, held)

    def _expire_overdue(self) -> None:
        expired = self.server.expire_overdue(time.monotonic())
        for device_id in expired:
            log.warning("assignment to %s timed out", device_id)
        if expired:
            self._after(self.server.aggregate_if_ready())

    # -- state -------------------------------------------------------------------------

    def job_state(self, state: str) -> JobState:
        """The retained summary operators and ``ftte status`` read."""
        server = self.server
        excluded = server.excluded_devices()
        return JobState(
            job=self.config.job.name,
            state=state,
            version=server.version,
            metrics=self.metrics,
            buffer_fill=len(server.strategy.buffered()),
            devices_online=server.devices_online(),
            accepted=server.accepted,
            rejected=dict(server.rejected) | self._failure_count(),
            heartbeat_unix_s=time.time(),
            delivery=self.delivery_counts(),
            fleet=_fleet_state(server.fleet_evaluation.latest(self.config.job.fleet_min_devices)),
            excluded=len(excluded),
            excluded_devices={
                d: excluded[d][:MAX_REASON_CHARS] for d in sorted(excluded)[:MAX_EXCLUDED_LISTED]
            },
            objective=self.objective.name,
        )

    def delivery_counts(self) -> dict[str, int]:
        """Delivery counters: this service's and the link's refused publishes."""
        # The last will's state is built before the link exists: nothing was refused yet.
        refused = self.link.refused_publishes() if hasattr(self, "link") else {}
        return dict(self.delivery) | {f"puback_{k}": n for k, n in refused.items()}

    def _failure_count(self) -> dict[str, int]:
        """Refusals that are not the engine's: status messages, retained updates, and handler
        failures."""
        counts = {f"status_{reason}": n for reason, n in self.status_refused.items()}
        if self.retained_updates:
            counts[RETAINED_UPDATE] = self.retained_updates
        failed = sum(self.failures.values())
        return counts | ({"handler_error": failed} if failed else {})

    def _publish_state(self, state: str) -> MQTTMessageInfo:
        topic = topics.model_topic(self.config.job.fleet)
        return self.link.publish(topic, self.job_state(state).encode(), qos=1, retain=True)

    def _finish(self) -> None:
        if self._unevaluated is not None:
            self._evaluate()
        self._checkpoint()
        last = self.releases.last
        if last is None or last.version != self.server.version:
            self._release()
        if self.link.connected.is_set():
            self._publish_best_release()
            self._publish_state("done").wait_for_publish(5.0)

    def _publish_best_release(self) -> None:
        """The job's best model to every device (retained: one that connects later gets it)."""
        best = self.releases.best
        if best is None:
            return
        payload = (self.releases.folder / best.file).read_bytes()
        try:
            info = self.link.publish(
                topics.release_topic(self.config.job.fleet), payload, retain=True
            )
        except PayloadTooLarge as exc:
            # A model bigger than one message cannot reach the devices; say so, keep it here.
            log.error("release of version %d not published: %s", best.version, exc)
            self.delivery["release_too_large"] += 1
            return
        info.wait_for_publish(10.0)
        log.info("release of version %d published to the fleet (%s)", best.version, best.sha256)


def _fleet_state(fleet: FleetMetrics | None) -> dict[str, float]:
    """The job state's fleet metrics: the newest version enough devices reported on."""
    if fleet is None:
        return {}
    return {**fleet.metrics, "version": fleet.version, "devices": fleet.devices}
