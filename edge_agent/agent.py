"""The edge agent: announce the device, train each assigned slice, publish the delta.

One thread does the work (decode, train, encode, persist, publish, handle acknowledgements
and resends); paho's network thread only queues messages and reports PUBACKs, so a long
training never starves the keep-alive. A finished update stays in the outbox until the
orchestrator acknowledges it (``edge_agent.delivery``). Every (re)connect announces the
assignments the agent holds, so the orchestrator sends again one a broker crash lost, and
an assignment that arrives twice is trained once.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import threading
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from types import FrameType

from edge_agent.config import AgentConfig, AgentSection, load_agent_config
from edge_agent.data import LocalData
from edge_agent.delivery import UpdateDelivery
from edge_agent.device import DeviceModel
from edge_agent.outbox import Outbox
from edge_agent.process import MEMORY_SHARE, process_memory, rss_bytes
from edge_agent.releases import DeviceReleases
from edge_agent.runtime import single_threaded
from ftte import __version__, topics
from ftte.errors import Rejected
from ftte.tasks import load_model_spec
from ftte.tasks.base import hold_out
from ftte.transport.mqtt import MqttLink, Will
from ftte.wire import decode_assignment, encode_update
from ftte.wire.control import MAX_HELD, OFFLINE, DeviceStatus, decode_ack
from ftte.wire.messages import Assignment

log = logging.getLogger("ftte.agent")

TAKEN_REMEMBERED = 64  # assignment ids remembered to train a re-sent assignment only once


def measured_budget_bytes() -> int:
    """A training budget from the memory this device has free right now."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(int(line.split()[1]) * 1024 * MEMORY_SHARE)
    raise RuntimeError("cannot read MemAvailable; set agent.memory_budget_bytes")


def training_budget(section: AgentSection, baseline_bytes: int) -> int:
    """The budget the agent announces for training: what the whole agent may hold minus
    what it holds before training (``baseline_bytes``: interpreter, runtime, model, data)."""
    if section.training_budget_bytes:
        return section.training_budget_bytes
    if not section.memory_budget_bytes:
        return measured_budget_bytes()  # measured after loading: the baseline is not free
    left = section.memory_budget_bytes - baseline_bytes
    if left <= 0:
        raise ValueError(
            f"agent.memory_budget_bytes = {section.memory_budget_bytes} B is what the whole "
            f"agent may hold, and it holds {baseline_bytes} B before training (runtime, model, "
            'data): raise it, or use runtime = "lean" (the smaller baseline)'
        )
    return left


class EdgeAgent:
    """One device's agent process."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        section = config.agent
        self.device_id = section.device_id
        spec = load_model_spec(config.data.task)
        self.data = LocalData(config.data, spec)
        self.data.read()  # data the model cannot train on stops the agent at start, named
        self.model = DeviceModel(spec, section.runtime)
        self.releases = DeviceReleases(section.state_dir / "releases", spec)
        self.baseline_bytes = rss_bytes()
        self.budget = training_budget(section, self.baseline_bytes)
        log.info(
            "%s runtime: %d B resident before training, training budget %d B",
            section.runtime,
            self.baseline_bytes,
            self.budget,
        )
        self.trained = 0
        self.failed = 0  # assignments whose training raised (its timeout frees the device)
        self.refused = 0
        self.duplicate_assignments = 0
        self._lock = threading.Lock()
        self._training: str | None = None  # the assignment being trained
        self._taken: deque[str] = deque(maxlen=TAKEN_REMEMBERED)
        fleet = section.fleet
        self._assign_topic = topics.assign_topic(fleet, self.device_id)
        self._ack_topic = topics.ack_topic(fleet, self.device_id)
        self._status_topic = topics.status_topic(fleet, self.device_id)
        self._update_topic = topics.update_topic(fleet, self.device_id)
        self._release_topic = topics.release_topic(fleet)
        self.link = MqttLink(
            config.broker,
            subscriptions=[(self._assign_topic, 1), (self._ack_topic, 1), (self._release_topic, 1)],
            will=Will(self._status_topic, OFFLINE),
            on_connect=self._announce,
            on_published=self._published,
        )
        self.delivery = UpdateDelivery(
            Outbox(section.state_dir / "outbox"),
            self._publish_update,
            section.resend_after_s,
            section.resend_max_s,
            time.monotonic(),
        )
        self._taken.extend(self.delivery.held())

    def run(self, stop: threading.Event) -> None:
        """Serve assignments until ``stop`` is set; then say goodbye and disconnect."""
        self.link.start()
        try:
            while not stop.is_set():
                try:
                    message = self.link.inbox.get(timeout=0.5)
                except queue.Empty:
                    message = None
                if message is not None and message.topic == self._assign_topic:
                    self._handle_assignment(message.payload, stop)
                elif message is not None and message.topic == self._ack_topic:
                    self._handle_ack(message.payload)
                elif message is not None and message.topic == self._release_topic:
                    self._handle_release(message.payload)
                self.delivery.resend_due(time.monotonic())
        finally:
            try:
                self.link.publish(self._status_topic, OFFLINE, retain=True).wait_for_publish(2.0)
            except RuntimeError:  # the broker is gone (stopped first): its will says offline
                log.info("no goodbye: not connected to the broker")
            self.link.stop()
            d = self.delivery
            log.info(
                "delivery: %d sent, %d resent, refused %s, acknowledged %s, %d still held",
                d.sent,
                d.resent,
                dict(d.refused),
                dict(d.acks),
                d.pending(),
            )

    def _handle_assignment(self, payload: bytes, stop: threading.Event) -> None:
        try:
            assignment = decode_assignment(payload)
        except Rejected as exc:
            self.refused += 1
            log.warning("refused assignment: %s", exc)
            return
        if assignment.device_id != self.device_id:
            self.refused += 1
            log.warning("assignment for %s arrived at %s", assignment.device_id, self.device_id)
            return
        with self._lock:
            again = assignment.assignment_id in self._taken
            if not again:
                self._taken.append(assignment.assignment_id)
                self._training = assignment.assignment_id
        if again:
            # Sent again after a reconnect while it was on its way already: train it once,
            # and if its answer is still held, the orchestrator lacks it: send that now.
            self.duplicate_assignments += 1
            resent = self.delivery.resend_answer(assignment.assignment_id, time.monotonic())
            log.info(
                "assignment %s arrived again; already taken (%d held answers sent again)",
                assignment.assignment_id,
                resent,
            )
            return
        try:
            self._train(assignment, stop)
        except Exception:
            # Whatever one assignment meets (a logger's file half-rewritten, a bug) must not
            # stop the agent: counted, logged, and the orchestrator's timeout frees the device.
            self.failed += 1
            log.exception("assignment %s failed; serving on", assignment.assignment_id)
        finally:
            with self._lock:
                self._training = None

    def _train(self, assignment: Assignment, stop: threading.Event) -> None:
        started = time.monotonic()
        train, held_out = hold_out(self.data.read(), self.config.data.holdout)
        update, result = self.model.train(assignment, train, self.trained, held_out=held_out)
        # After training, so the process's high-water mark includes this training's peak.
        process = process_memory()
        update = replace(update, process=process)
        self.trained += 1
        if self.config.agent.slowdown > 1.0:
            stop.wait((self.config.agent.slowdown - 1.0) * (time.monotonic() - started))
        encoded = encode_update(update, assignment.train.delta_encoding)
        self.delivery.submit(update.update_id, assignment.assignment_id, encoded, time.monotonic())
        log.info(
            "finished update %s for assignment %s of job %s: %d tensors received, %d trained "
            "from version %d, loss %.3f, peak %d B of %d B budget; process RSS peak %d B, "
            "anonymous %d B",
            update.update_id,
            assignment.assignment_id,
            assignment.job,
            len(assignment.tensors),
            len(assignment.trainable),
            assignment.version,
            result.loss,
            result.peak_mem_bytes,
            self.budget,
            process.rss_peak_bytes,
            process.rss_anon_bytes,
        )

    def _handle_release(self, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained release
        try:
            release = self.releases.receive(payload)
        except (Rejected, OSError) as exc:
            self.refused += 1
            log.warning("release not kept: %s", exc)
            return
        if release is not None:
            log.info(
                "release of job %s version %d kept (%s)",
                release.job,
                release.version,
                ", ".join(f"{k} {v:.3f}" for k, v in sorted(release.metrics.items())),
            )

    def _handle_ack(self, payload: bytes) -> None:
        try:
            ack = decode_ack(payload)
        except Rejected as exc:
            self.refused += 1
            log.warning("refused acknowledgement: %s", exc)
            return
        entry = self.delivery.on_ack(ack)
        if entry is None:
            log.info("update %s acknowledged again (%s)", ack.update_id, ack.verdict.value)
            return
        reason = f" ({ack.reason})" if ack.reason else ""
        log.info("update %s %s%s", ack.update_id, ack.verdict.value, reason)

    def _publish_update(self, payload: bytes) -> int:
        return self.link.publish(self._update_topic, payload, qos=1).mid

    def _published(self, mid: int, reason: int) -> None:
        self.delivery.on_published(mid, reason, time.monotonic())

    def _announce(self) -> None:
        """On every (re)connect: the retained birth with what the agent holds, then every
        update not yet acknowledged."""
        with self._lock:
            training = [self._training] if self._training is not None else []
        held = [*self.delivery.held(), *training][-MAX_HELD:]
        status = DeviceStatus(
            device_id=self.device_id,
            memory_budget_bytes=self.budget,
            compute_class=self.config.agent.compute_class,
            software_version=__version__,
            model_version=self.model.version,
            assignments=tuple(held),
            model_job=self.model.job,
        )
        self.link.publish(self._status_topic, status.encode(), retain=True)
        self.delivery.on_connect(time.monotonic())


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``ftte-agent --config agent.toml [run | predict --input F | rollback]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="ftte-agent", description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--log-level", default="INFO")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="serve the fleet (the default)")
    predict = commands.add_parser("predict", help="score windows with the release served")
    predict.add_argument("--input", type=Path, required=True, help=".npz with x, or a .csv")
    commands.add_parser("rollback", help="serve the previous release again")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    try:
        config = load_agent_config(args.config)
        single_threaded(config.agent.runtime)
        if args.command == "predict":
            return _predict(config, args.input)
        if args.command == "rollback":
            spec = load_model_spec(config.data.task)
            release = DeviceReleases(config.agent.state_dir / "releases", spec).rollback()
            print(f"serving the release of job {release.job} version {release.version}")
            return 0
        agent = EdgeAgent(config)
    except (ValueError, FileNotFoundError, ImportError, Rejected) as exc:
        print(f"ftte-agent: {exc}")
        return 2
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.run(stop)
    return 0


def _predict(config: AgentConfig, path: Path) -> int:
    """One JSON line per sample of ``path``: the objective's answer (``edge_agent.predict``)."""
    from edge_agent.predict import Predictor, read_input

    predictor = Predictor.from_config(config)
    for answer in predictor.predict(read_input(path, config)):
        print(json.dumps(answer))
    return 0
