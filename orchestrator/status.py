"""``ftte status``: read the job's retained state from the model topic."""

from __future__ import annotations

import dataclasses
import queue
from typing import Any

from ftte import topics
from ftte.wire.control import decode_job_state
from orchestrator.config import JobConfig
from transport.mqtt import MqttLink


def read_status(config: JobConfig, timeout_s: float) -> dict[str, Any]:
    """The retained job state as a dict; a clear error if none arrives in time."""
    link = MqttLink(
        config.broker,
        client_id=f"ftte-status-{config.job.name}",
        subscriptions=[(topics.model_topic(config.job.fleet), 1)],
        persistent=False,
    )
    link.start()
    try:
        message = link.inbox.get(timeout=timeout_s)
    except queue.Empty as exc:
        raise TimeoutError(
            f"no job state on {topics.model_topic(config.job.fleet)} within {timeout_s} s; "
            "is the orchestrator running and the broker reachable?"
        ) from exc
    finally:
        link.stop()
    return dataclasses.asdict(decode_job_state(message.payload))
