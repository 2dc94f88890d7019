"""The edge agent: announce the device, train each assigned slice, publish the delta.

One thread does the work (decode, train, encode, persist, publish); paho's network thread
only queues messages and reports acknowledgements, so a long training never starves the
keep-alive.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from pathlib import Path
from types import FrameType

import torch

from edge_agent.config import AgentConfig, load_agent_config
from edge_agent.data import load_local_data
from edge_agent.device import DeviceModel
from edge_agent.outbox import Outbox
from ftte import __version__, topics
from ftte.errors import Rejected
from ftte.tasks import load_model_spec
from ftte.transport.mqtt import MqttLink, Will
from ftte.wire import decode_assignment, encode_update
from ftte.wire.control import OFFLINE, DeviceStatus

log = logging.getLogger("ftte.agent")

MEMORY_SHARE = 0.25  # of MemAvailable, when no budget is configured: the sensing app keeps the rest


def measured_budget_bytes() -> int:
    """A training budget from the memory this device has free right now."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(int(line.split()[1]) * 1024 * MEMORY_SHARE)
    raise RuntimeError("cannot read MemAvailable; set agent.memory_budget_bytes")


class EdgeAgent:
    """One device's agent process."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        section = config.agent
        self.device_id = section.device_id
        self.budget = section.memory_budget_bytes or measured_budget_bytes()
        self.data = load_local_data(config.data)
        self.model = DeviceModel(load_model_spec(config.data.task).make_model)
        self.outbox = Outbox(section.state_dir / "outbox")
        self.trained = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._in_flight: dict[int, str] = {}  # publish mid -> update id
        self._early_acks: set[int] = set()
        fleet = section.fleet
        self._assign_topic = topics.assign_topic(fleet, self.device_id)
        self._status_topic = topics.status_topic(fleet, self.device_id)
        self._update_topic = topics.update_topic(fleet, self.device_id)
        self.link = MqttLink(
            config.broker,
            subscriptions=[(self._assign_topic, 1)],
            will=Will(self._status_topic, OFFLINE),
            on_connect=self._announce,
            on_published=self._acknowledged,
        )

    def run(self, stop: threading.Event) -> None:
        """Serve assignments until ``stop`` is set; then say goodbye and disconnect."""
        self.link.start()
        try:
            while not stop.is_set():
                try:
                    message = self.link.inbox.get(timeout=0.5)
                except queue.Empty:
                    continue
                if message.topic == self._assign_topic:
                    self._handle_assignment(message.payload, stop)
        finally:
            self.link.publish(self._status_topic, OFFLINE, retain=True).wait_for_publish(2.0)
            self.link.stop()

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
        started = time.monotonic()
        update, result = self.model.train(assignment, self.data, seed=self.trained)
        self.trained += 1
        if self.config.agent.slowdown > 1.0:
            stop.wait((self.config.agent.slowdown - 1.0) * (time.monotonic() - started))
        encoded = encode_update(update, assignment.train.delta_encoding)
        self.outbox.put(update.update_id, encoded)
        self._publish_update(update.update_id, encoded)
        log.info(
            "trained %d tensors from version %d: loss %.3f, peak %d B of %d B budget",
            len(assignment.trainable),
            assignment.version,
            result.loss,
            result.peak_mem_bytes,
            self.budget,
        )

    def _publish_update(self, update_id: str, encoded: bytes) -> None:
        # Publish outside the lock (paho may call back into _acknowledged under its own
        # mutex); an acknowledgement that beats us to the lock waits in _early_acks.
        info = self.link.publish(self._update_topic, encoded, qos=1)
        with self._lock:
            acked = info.mid in self._early_acks
            self._early_acks.discard(info.mid)
            if not acked:
                self._in_flight[info.mid] = update_id
        if acked:
            self.outbox.done(update_id)

    def _announce(self) -> None:
        """On every (re)connect: the retained birth message, then anything unacknowledged."""
        status = DeviceStatus(
            device_id=self.device_id,
            memory_budget_bytes=self.budget,
            compute_class=self.config.agent.compute_class,
            software_version=__version__,
            model_version=self.model.version,
        )
        self.link.publish(self._status_topic, status.encode(), retain=True)
        with self._lock:
            waiting = set(self._in_flight.values())
        for update_id, encoded in self.outbox.pending():
            if update_id not in waiting:
                self._publish_update(update_id, encoded)

    def _acknowledged(self, mid: int) -> None:
        with self._lock:
            update_id = self._in_flight.pop(mid, None)
            if update_id is None:
                self._early_acks.add(mid)
        if update_id is not None:
            self.outbox.done(update_id)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ftte-agent --config agent.toml``."""
    import argparse

    parser = argparse.ArgumentParser(prog="ftte-agent", description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small models; leave the other core to the sensing workload
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    try:
        agent = EdgeAgent(load_agent_config(args.config))
    except (ValueError, FileNotFoundError) as exc:
        print(f"ftte-agent: {exc}")
        return 2
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.run(stop)
    return 0
