"""A user's forecasting task: the next hour of greenhouse temperature from the last eight.

The objective is regression (``ftte.tasks.objectives.REGRESSION``): the model outputs the
next ``HORIZON`` readings and trains on their mean squared error. A sample is the last
``HISTORY`` readings relative to the newest one, and the target the next ``HORIZON``
readings relative to it too: the model learns the change ahead, the same for a warm or a
cold greenhouse. There is no central validation set: the devices measure each model on a
held-out share of their own windows (``target_on = "fleet"``).

Devices read their logs with ``windows`` as ``data.loader`` (a window of ``HISTORY +
HORIZON`` rows, split into the model's input and its target).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ftte.sensors import SensorReader, SensorSource
from ftte.tasks.base import Dataset, ModelSpec, Task
from ftte.tasks.layers import Flatten, Linear, ReLU
from ftte.tasks.objectives import REGRESSION

HISTORY, HORIZON = 48, 6  # 8 hours in, 1 hour out, at one reading every 10 minutes
STRIDE = 3
LOGS = Path(os.environ.get("FORECAST_LOGS", Path(__file__).parent / "logs"))

MODEL = ModelSpec(
    name="forecast",
    layers=(Flatten(), Linear(HISTORY, 32), ReLU(), Linear(32, HORIZON)),
    input_shape=(1, HISTORY),
    objective=REGRESSION,
)


def windows(path: str | Path) -> Dataset:
    """A greenhouse's log file or folder as (last 8 h, next 1 h), relative to the newest
    reading of the 8 h."""
    source = SensorSource(
        Path(path), HISTORY + HORIZON, STRIDE, channels=["temperature"], timestamp="time"
    )
    rows = SensorReader(source).read().x  # (n, 1, HISTORY + HORIZON)
    now = rows[:, :, HISTORY - 1 : HISTORY]
    relative = rows - now
    x = np.ascontiguousarray(relative[:, :, :HISTORY])
    y = np.ascontiguousarray(relative[:, 0, HISTORY:])
    return Dataset(x.astype(np.float32), y.astype(np.float32))


def task(num_devices: int, seed: int, alpha: float, **_options: Any) -> Task:
    """The model and each greenhouse's windows; no central validation set."""
    del seed, alpha  # the data is the devices' own, not a random partition
    devices = [windows(LOGS / f"greenhouse-{i}") for i in range(num_devices)]
    return Task(MODEL, devices, validation=None, target=0.05)
