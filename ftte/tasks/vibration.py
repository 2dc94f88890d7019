"""Machine-fault diagnosis from vibration: the sensor task ftte's field users run.

Each window is 256 samples of a 1 kHz accelerometer on a rotating machine. A device has its
own shaft speed (10–30 Hz), sensor gain and noise floor, so devices differ in features as
well as in label mix. Classes follow textbook vibration signatures: healthy (weak 1x),
imbalance (strong 1x), misalignment (strong 2x and 3x), outer-race bearing fault (impulses
at ~3.6x shaft speed ringing a 150–250 Hz structural resonance) and mechanical looseness
(a comb of harmonics, a half-order sub-harmonic and clipping).
"""

from __future__ import annotations

import numpy as np

from ftte.tasks.base import Dataset, ModelSpec, Task
from ftte.tasks.layers import (
    Conv1d,
    Flatten,
    Linear,
    MaxPool1d,
    ReLU,
)
from ftte.tasks.partition import check_generation, dirichlet_labels

SAMPLE_RATE_HZ = 1000.0
WINDOW = 256
CLASSES = ("healthy", "imbalance", "misalignment", "bearing", "looseness")
# Reached by FedAvg and FTTE in a short simulated run; central training reaches ~0.97.
TARGET_ACCURACY = 0.85
VALIDATION_WINDOWS = 1000


# A 1-D CNN of about 16k parameters whose activations dominate training memory.
VIBRATION_LAYERS = (
    Conv1d(1, 16, 7, padding=3),
    ReLU(),
    MaxPool1d(2),
    Conv1d(16, 32, 5, padding=2),
    ReLU(),
    MaxPool1d(2),
    Conv1d(32, 32, 5, padding=2),
    ReLU(),
    MaxPool1d(8),
    Flatten(),
    Linear(32 * 8, 32),
    ReLU(),
    Linear(32, len(CLASSES)),
)
VIBRATION_MODEL = ModelSpec("vibration", VIBRATION_LAYERS, (1, WINDOW), len(CLASSES))


def _windows(
    labels: np.ndarray, shaft_hz: float, gain: float, noise: float, rng: np.random.Generator
) -> np.ndarray:
    """One window per label for a machine turning at ``shaft_hz``."""
    n = len(labels)
    t = np.arange(WINDOW) / SAMPLE_RATE_HZ
    f0 = shaft_hz * rng.uniform(0.97, 1.03, size=(n, 1))  # speed drifts between windows

    def tone(order: float, amp: np.ndarray | float) -> np.ndarray:
        phase = rng.uniform(0, 2 * np.pi, size=(n, 1))
        return amp * np.sin(2 * np.pi * order * f0 * t + phase)

    x = tone(1, 0.3)
    x += tone(1, 0.9) * (labels == 1)[:, None]
    x += (tone(2, 0.8) + tone(3, 0.4)) * (labels == 2)[:, None]
    bearing = labels == 3
    if bearing.any():
        resonance = rng.uniform(150, 250, size=(n, 1))
        period = 1.0 / (3.6 * f0)
        since = np.mod(t + rng.uniform(0, 1, size=(n, 1)) * period, period)
        ring = np.exp(-since * 60.0) * np.sin(2 * np.pi * resonance * since)
        x += 1.2 * ring * bearing[:, None]
    loose = labels == 4
    if loose.any():
        comb = sum(tone(k, 0.5 / k) for k in range(2, 7)) + tone(0.5, 0.4)
        x += np.clip(comb, -0.6, 0.6) * loose[:, None]
    x = gain * x + rng.normal(0.0, noise, size=x.shape)
    return x[:, None, :].astype(np.float32)


def _device_conditions(rng: np.random.Generator) -> tuple[float, float, float]:
    return rng.uniform(10, 30), rng.uniform(0.7, 1.3), rng.uniform(0.3, 0.6)


def vibration_task(
    num_devices: int = 20, seed: int = 0, alpha: float = 0.5, samples_per_device: int = 60
) -> Task:
    """Vibration windows for ``num_devices`` machines, labels mixed by Dirichlet(alpha)."""
    check_generation(num_devices, samples_per_device, alpha)
    rng = np.random.default_rng(seed)
    k = len(CLASSES)
    devices = []
    for _ in range(num_devices):
        shaft, gain, noise = _device_conditions(rng)
        labels = dirichlet_labels(k, samples_per_device, alpha, rng)
        devices.append(Dataset(_windows(labels, shaft, gain, noise, rng), labels))
    # Validation: machines the fleet never saw, every class equally often.
    val_rng = np.random.default_rng(10_000 + seed)
    per_machine = 50
    xs, ys = [], []
    for _ in range(VALIDATION_WINDOWS // per_machine):
        shaft, gain, noise = _device_conditions(val_rng)
        labels = np.arange(per_machine, dtype=np.int64) % k
        xs.append(_windows(labels, shaft, gain, noise, val_rng))
        ys.append(labels)
    return Task(
        model=VIBRATION_MODEL,
        devices=devices,
        validation=Dataset(np.concatenate(xs), np.concatenate(ys)),
        target=TARGET_ACCURACY,
    )
