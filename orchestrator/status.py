"""Retained state on the broker: the job's (``ftte status``) and one device's (deploy checks).

Both read with the operator's account (``broker-files/operator.toml``), never the
orchestrator's: the broker makes the username the client id, so a second connection as
``ftte_orchestrator`` would take over the running orchestrator's session. The operator's
sessions are not persistent; two operator commands at once take the connection from each
other (each reconnects and reads the retained message again).
"""

from __future__ import annotations

import dataclasses
import queue
import time
from pathlib import Path
from typing import Any

from ftte import topics
from ftte.config import load_section, read_toml, resolve
from ftte.errors import Rejected
from ftte.transport.mqtt import BrokerSettings, MqttLink
from ftte.wire.control import (
    HEARTBEAT_S,
    DeviceStatus,
    JobState,
    decode_job_state,
    decode_status,
)

STALE_AFTER_S = 5 * HEARTBEAT_S  # a running orchestrator this quiet is reported unresponsive


def liveness(state: JobState, now_unix_s: float) -> str:
    """What the retained state says of the orchestrator: running, unresponsive, done, gone.

    ``gone`` is its last will (the connection died); ``unresponsive`` a running state whose
    heartbeat is older than ``STALE_AFTER_S`` (a hung process keeps its connection until the
    broker's keep-alive runs out). Wall clocks of the two machines are assumed close.
    """
    if state.state == "running" and now_unix_s - state.heartbeat_unix_s > STALE_AFTER_S:
        return "unresponsive"
    return state.state


def read_status(settings: BrokerSettings, fleet: str, timeout_s: float) -> dict[str, Any]:
    """The retained job state of ``fleet`` as a dict, with its ``liveness``; a clear error if
    none arrives in time."""
    topic = topics.model_topic(fleet)
    link = MqttLink(settings, subscriptions=[(topic, 1)], persistent=False)
    link.start()
    try:
        message = link.inbox.get(timeout=timeout_s)
    except queue.Empty as exc:
        raise TimeoutError(
            f"no job state on {topic} within {timeout_s} s; "
            "is the orchestrator running and the broker reachable?"
        ) from exc
    finally:
        link.stop()
    state = decode_job_state(message.payload)
    return dataclasses.asdict(state) | {"liveness": liveness(state, time.time())}


def load_broker_account(path: Path) -> BrokerSettings:
    """The ``[broker]`` table of a credentials file such as ``broker-files/operator.toml``."""
    settings = load_section(BrokerSettings, read_toml(path).get("broker"), str(path), "broker")
    return dataclasses.replace(settings, ca_file=resolve(path, settings.ca_file))


def wait_online(
    settings: BrokerSettings,
    fleet: str,
    device: str,
    timeout_s: float,
    software_version: str | None = None,
) -> DeviceStatus:
    """Block until ``device``'s retained status says online (with ``software_version`` if
    given); a TimeoutError says what was last seen.

    A rolling deploy calls this after restarting an agent: the retained birth is only
    published once the new process has connected with its credentials, so it proves
    config, TLS, password and ACL on the device together.
    """
    topic = topics.status_topic(fleet, device)
    link = MqttLink(settings, subscriptions=[(topic, 1)], persistent=False)
    deadline = time.monotonic() + timeout_s
    last_seen = "nothing"
    link.start()
    try:
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = link.inbox.get(timeout=left)
            except queue.Empty:
                break
            try:
                status = decode_status(message.payload)
            except Rejected as exc:
                last_seen = f"an unreadable status ({exc})"
                continue
            if status is None:
                last_seen = "offline"
            elif software_version is not None and status.software_version != software_version:
                last_seen = f"online with version {status.software_version}"
            else:
                return status
    finally:
        link.stop()
    wanted = "online" if software_version is None else f"online with version {software_version}"
    raise TimeoutError(f"{device} not {wanted} on {topic} within {timeout_s} s (saw {last_seen})")
