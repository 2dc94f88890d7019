"""The orchestrator service: the training server behind MQTT.

One worker thread owns all state. paho's network thread only queues messages; the worker
decodes and validates them, journals accepted updates before acknowledging them to the
broker, feeds the server, checkpoints after aggregations, dispatches assignments to idle
devices and publishes the retained job state. Telemetry is handed to a batching writer and
never waits on the database.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
from paho.mqtt.client import MQTTMessageInfo

from ftte import topics
from ftte.errors import Rejected, RejectReason
from ftte.tasks import load_task
from ftte.transport.mqtt import Inbound, MqttLink, PayloadTooLarge
from ftte.wire import decode_update, encode_assignment
from ftte.wire.control import JobState, decode_status
from ftte.wire.limits import WireLimits
from orchestrator.checkpoint import Journal, load_checkpoint, save_checkpoint
from orchestrator.config import JobConfig
from orchestrator.presets import JobKnobs, make_server
from orchestrator.telemetry import open_telemetry

log = logging.getLogger("ftte.orchestrator")

ORCHESTRATOR_CLIENT_PREFIX = "ftte-orchestrator"


@dataclass(frozen=True)
class JobResult:
    """How a job ended."""

    version: int
    accuracy: float
    reached_target: bool
    wall_time_s: float


class OrchestratorService:
    """Runs one training job against the fleet's broker."""

    def __init__(self, config: JobConfig) -> None:
        self.config = config
        job = config.job
        task = load_task(job.task, num_devices=job.num_partitions, seed=job.seed)
        self.target = job.target_accuracy or task.target_accuracy
        knobs = JobKnobs(
            job=job.name,
            train=config.train,
            buffer_size=job.buffer_size,
            clients_per_round=job.clients_per_round,
            max_staleness=job.max_staleness,
            model_seed=job.seed,
        )
        self.server = make_server(job.strategy, task, knobs)
        self.limits = WireLimits()
        self.run_dir = job.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.resumed = load_checkpoint(self.server, self.run_dir)
        if self.resumed:
            log.info(
                "resumed from checkpoint at version %d with %d accepted updates",
                self.server.version,
                self.server.accepted,
            )
        self.journal = Journal(self.run_dir)
        self.telemetry = open_telemetry(job.fleet, job.name, config.influx, self.run_dir)
        self.rng = np.random.default_rng(job.seed + self.server.version)
        self.accuracy = self.server.evaluate()[0]
        # Restored open assignments get a fresh timeout: their devices may have lost them.
        self._dispatched_at: dict[str, float] = {
            d.device_id: time.monotonic()
            for d in self.server.devices.values()
            if d.open_assignment is not None
        }
        self._replaying = False
        self._started = time.monotonic()
        self.history: list[tuple[float, int, float]] = []  # (wall s, version, accuracy)
        self.link = MqttLink(
            config.broker,
            client_id=f"{ORCHESTRATOR_CLIENT_PREFIX}-{job.name}",
            subscriptions=[
                (topics.all_status_filter(job.fleet), 1),
                (topics.all_updates_filter(job.fleet), 1),
            ],
            manual_ack=True,
        )
        self._replay_journal()

    def run(self, stop: threading.Event) -> JobResult:
        """Serve the fleet until the target, a limit, or ``stop``; publish the final state."""
        started = self._started = time.monotonic()
        self.link.start()
        job = self.config.job
        reached = self.accuracy >= self.target
        last_state = 0.0
        try:
            while not stop.is_set() and not reached:
                if self.server.version >= job.max_versions:
                    break
                if time.monotonic() - started > job.max_wall_s:
                    log.warning("job wall-time limit of %.0f s reached", job.max_wall_s)
                    break
                try:
                    message = self.link.inbox.get(timeout=0.2)
                except queue.Empty:
                    message = None
                if message is not None:
                    reached = self._handle(message)
                self._expire_assignments()
                if self.link.connected.is_set():
                    self._dispatch()
                    if time.monotonic() - last_state > 2.0:
                        self._publish_state("running")
                        last_state = time.monotonic()
            self._finish()
        finally:
            self.link.stop()
            self.telemetry.close()
            self.journal.close()
        return JobResult(self.server.version, self.accuracy, reached, time.monotonic() - started)

    # -- messages ----------------------------------------------------------------------

    def _handle(self, message: Inbound) -> bool:
        """Process one message; return whether the target accuracy was reached."""
        try:
            ref = topics.parse(message.topic)
        except ValueError:
            self.link.ack(message)
            return False
        if ref.kind == "status" and ref.device is not None:
            self._handle_status(ref.device, message.payload)
            self.link.ack(message)
            return False
        if ref.kind == "update" and ref.device is not None:
            return self._handle_update(ref.device, message)
        self.link.ack(message)
        return False

    def _handle_status(self, device_id: str, payload: bytes) -> None:
        try:
            status = decode_status(payload)
        except Rejected as exc:
            log.warning("bad status from %s: %s", device_id, exc)
            return
        if status is None:
            self.server.set_offline(device_id)
            self._aggregate_if_ready()
            self.telemetry.device_status(device=device_id, online=False, budget_bytes=None)
            return
        if status.device_id != device_id:
            log.warning("status on %s names %s; ignored", device_id, status.device_id)
            return
        self.server.register(device_id, status.memory_budget_bytes, status.model_version)
        self.telemetry.device_status(
            device=device_id, online=True, budget_bytes=status.memory_budget_bytes
        )

    def _handle_update(self, device_id: str, message: Inbound) -> bool:
        accepted = self._receive(device_id, message.topic, message.payload, journal=True)
        self.link.ack(message)
        return accepted and self.accuracy >= self.target

    def _receive(self, device_id: str, topic: str, payload: bytes, journal: bool) -> bool:
        """Decode, validate and apply one update; journal it first if it will be kept."""
        server = self.server
        try:
            if device_id not in server.devices:
                raise Rejected(RejectReason.UNKNOWN_DEVICE, device_id)
            update = decode_update(payload, self.limits, server.expected_shapes(device_id))
            if update.device_id != device_id:
                raise Rejected(RejectReason.UNKNOWN_DEVICE, "payload names another device")
        except Rejected as exc:
            server.reject(exc.reason)
            # The device answered, badly: free it for a fresh assignment rather than
            # leaving it idle until the assignment times out.
            server.expire(device_id)
            self._dispatched_at.pop(device_id, None)
            self._aggregate_if_ready()
            self._update_point(device_id, "", 0, None, len(payload), float("nan"), exc.reason, 0)
            return False
        if journal:
            self.journal.append(topic, payload)
        age = server.version - update.base_version
        outcome = server.receive(update)
        self._dispatched_at.pop(device_id, None)
        weight = None
        if outcome.aggregation is not None:
            weight = outcome.aggregation.weights.get(update.update_id)
        self._update_point(
            device_id,
            update.update_id,
            age,
            weight,
            len(payload),
            update.loss,
            outcome.reason,
            update.peak_mem_bytes,
        )
        if outcome.aggregation is not None:
            self._after_aggregation(len(outcome.aggregation.weights))
        return outcome.accepted

    def _update_point(
        self,
        device: str,
        update_id: str,
        age: int,
        weight: float | None,
        size: int,
        loss: float,
        reason: RejectReason | None,
        peak: int,
    ) -> None:
        self.telemetry.update(
            device=device,
            update_id=update_id,
            age=age,
            weight=weight,
            bytes_=size,
            loss=loss,
            accepted=reason is None,
            reason=None if reason is None else reason.value,
            peak_mem_bytes=peak,
        )

    def _after_aggregation(self, num_updates: int) -> None:
        started = time.monotonic()
        self.accuracy, loss = self.server.evaluate()
        self.history.append((time.monotonic() - self._started, self.server.version, self.accuracy))
        due = self.server.version % self.config.job.checkpoint_every == 0
        if due and not self._replaying:
            save_checkpoint(self.server, self.run_dir)
            self.journal.truncate()
        self.telemetry.aggregation(
            version=self.server.version,
            buffer_fill=len(self.server.strategy.buffered()),
            num_updates=num_updates,
            val_accuracy=self.accuracy,
            val_loss=loss,
            wall_time_s=time.monotonic() - started,
        )
        log.info("version %d: accuracy %.3f", self.server.version, self.accuracy)

    def _aggregate_if_ready(self) -> None:
        """A device leaving can complete a synchronous round: apply it now if so."""
        report = self.server.aggregate_if_ready()
        if report is not None:
            self._after_aggregation(len(report.weights))

    def _replay_journal(self) -> None:
        """After a crash: re-apply updates acknowledged since the last checkpoint."""
        replayed = 0
        # No checkpoint until every entry is re-applied: truncating the journal halfway
        # would lose the rest if we crashed again.
        self._replaying = True
        for topic, payload in list(self.journal.entries()):
            ref = topics.parse(topic)
            if ref.device is not None:
                self._receive(ref.device, topic, payload, journal=False)
                replayed += 1
        self._replaying = False
        if replayed:
            save_checkpoint(self.server, self.run_dir)
            self.journal.truncate()
            log.info(
                "replayed %d journaled updates: now at version %d with %d accepted updates",
                replayed,
                self.server.version,
                self.server.accepted,
            )

    # -- dispatch ----------------------------------------------------------------------

    def _dispatch(self) -> None:
        fleet = self.config.job.fleet
        for assignment in self.server.dispatch(self.rng):
            payload = encode_assignment(assignment, self.server.config.model_encoding)
            try:
                self.link.publish(
                    topics.assign_topic(fleet, assignment.device_id),
                    payload,
                    qos=1,
                    expiry_s=self.config.job.assignment_timeout_s,
                )
            except PayloadTooLarge as exc:
                log.error("cannot send assignment: %s", exc)
                self.server.expire(assignment.device_id)
                continue
            self._dispatched_at[assignment.device_id] = time.monotonic()

    def _expire_assignments(self) -> None:
        timeout = self.config.job.assignment_timeout_s
        now = time.monotonic()
        for device_id, at in list(self._dispatched_at.items()):
            if now - at > timeout:
                log.warning("assignment to %s timed out after %d s", device_id, timeout)
                self.server.expire(device_id)
                del self._dispatched_at[device_id]
                self._aggregate_if_ready()

    # -- state -------------------------------------------------------------------------

    def job_state(self, state: str) -> JobState:
        """The retained summary operators and ``ftte status`` read."""
        server = self.server
        return JobState(
            job=self.config.job.name,
            state=state,
            version=server.version,
            accuracy=self.accuracy,
            buffer_fill=len(server.strategy.buffered()),
            devices_online=sum(1 for d in server.devices.values() if d.online),
            accepted=server.accepted,
            rejected=dict(server.rejected),
        )

    def _publish_state(self, state: str) -> MQTTMessageInfo:
        topic = topics.model_topic(self.config.job.fleet)
        return self.link.publish(topic, self.job_state(state).encode(), qos=1, retain=True)

    def _finish(self) -> None:
        save_checkpoint(self.server, self.run_dir)
        self.journal.truncate()
        np.savez(self.run_dir / "final_model.npz", **self.server.params)  # type: ignore[arg-type]
        if self.link.connected.is_set():
            self._publish_state("done").wait_for_publish(5.0)
