"""A user's unlabelled anomaly detector: an autoencoder of pump vibration windows.

The objective is reconstruction (``ftte.tasks.objectives.RECONSTRUCTION``): the model
squeezes a 64-reading window (0.16 s at 400 Hz) through 8 values and rebuilds it; it trains
on normal running only, which needs no labels, and a window it rebuilds badly is unusual
for the pump. Its anomaly score is the reconstruction error; each device flags a window
above the 99th percentile of its own held-out windows' scores. There is no central
validation set: devices measure each model on their held-out windows (``target_on =
"fleet"``). Windows do not overlap, so a fault of 64 rows fills about one window.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ftte.sensors import SensorReader, SensorSource
from ftte.tasks.base import Dataset, ModelSpec, Task
from ftte.tasks.layers import Flatten, Linear, ReLU
from ftte.tasks.objectives import RECONSTRUCTION

WINDOW = 64
LOGS = Path(os.environ.get("PUMP_LOGS", Path(__file__).parent / "logs"))

MODEL = ModelSpec(
    name="pump-autoencoder",
    layers=(
        Flatten(),
        Linear(WINDOW, 32),
        ReLU(),
        Linear(32, 8),
        ReLU(),
        Linear(8, 32),
        ReLU(),
        Linear(32, WINDOW),
    ),
    input_shape=(1, WINDOW),
    objective=RECONSTRUCTION,
)


def windows(path: Path, label: str = "") -> Dataset:
    """A pump's log file or folder as windows (with the ``anomaly`` labels of a test log)."""
    source = SensorSource(path, WINDOW, channels=["accel"], timestamp="time", label=label)
    return SensorReader(source).read()


def task(num_devices: int, seed: int, alpha: float, **_options: Any) -> Task:
    """The autoencoder and each pump's unlabelled windows; no central validation set."""
    del seed, alpha  # the data is the devices' own, not a random partition
    devices = [windows(LOGS / f"pump-{i}") for i in range(num_devices)]
    return Task(MODEL, devices, validation=None, target=0.003)
