"""A user's task: activity recognition from 6-channel motion windows.

The model is written with ``ftte.tasks.layers`` (so devices train it with the lean runtime,
without torch); the task factory gives the orchestrator the model and a validation set (the
lab recording), and the simulator one partition per device. Windows are 64 rows (1.3 s at
50 Hz), a new one every 32 rows: the same numbers go in each device's ``[data.sensors]``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ftte.sensors import SensorReader, SensorSource
from ftte.tasks.base import Dataset, ModelSpec, Task
from ftte.tasks.layers import Conv1d, Flatten, Linear, MaxPool1d, ReLU

WINDOW, STRIDE = 64, 32
CHANNELS = ["ax", "ay", "az", "gx", "gy", "gz"]
LOGS = Path(os.environ.get("MOTION_LOGS", Path(__file__).parent / "logs"))

MODEL = ModelSpec(
    name="motion",
    layers=(
        Conv1d(6, 16, 5, padding=2),
        ReLU(),
        MaxPool1d(4),
        Conv1d(16, 16, 5, padding=2),
        ReLU(),
        MaxPool1d(4),
        Flatten(),
        Linear(16 * 4, 32),
        ReLU(),
        Linear(32, 3),
    ),
    input_shape=(6, WINDOW),
    num_classes=3,
)


def windows(path: Path) -> Dataset:
    """A log file or folder as the model's windows, the way the agents read theirs."""
    source = SensorSource(
        path, WINDOW, STRIDE, channels=CHANNELS, timestamp="time", label="activity"
    )
    return SensorReader(source).read()


def task(num_devices: int, seed: int, alpha: float, **_options: Any) -> Task:
    """The model, the lab recording to validate on, and each device's own logs."""
    del seed, alpha  # the data is the devices' own, not a random partition
    devices = [windows(LOGS / f"motion-{i}") for i in range(num_devices)]
    return Task(MODEL, devices, windows(LOGS / "lab.csv"), target=0.9)


def pooled(num_devices: int) -> Dataset:
    """Every device's windows together: what a central model would train on."""
    parts = [windows(LOGS / f"motion-{i}") for i in range(num_devices)]
    return Dataset(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))
