"""Handwritten digits (scikit-learn's bundled 8x8 set) with a small CNN.

1,797 images cannot give 500 devices a meaningful local set, so the training pool is the
training split plus augmented copies (±1 pixel shifts, intensity scaling, pixel noise),
made to size and seeded. Validation is a stratified quarter of the original images, never
augmented and never on a device.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ftte.tasks.base import Dataset, ModelSpec, Task
from ftte.tasks.layers import (
    BatchNorm2d,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
)
from ftte.tasks.partition import dirichlet_partition

# Reached by FedAvg and FTTE in a short simulated run (see docs/benchmarks.md); a small CNN
# trained centrally on this data reaches about 0.97.
TARGET_ACCURACY = 0.90


# Three 3x3 convolutions and two linear layers, about 18k parameters: sized so that
# activations, not weights, dominate training memory at batch 32 (the memory story of
# on-device training).
DIGITS_LAYERS = (
    Conv2d(1, 16, 3, padding=1),
    ReLU(),
    Conv2d(16, 32, 3, padding=1),
    ReLU(),
    MaxPool2d(2),
    Conv2d(32, 32, 3, padding=1),
    ReLU(),
    MaxPool2d(2),
    Flatten(),
    Linear(32 * 2 * 2, 32),
    ReLU(),
    Linear(32, 10),
)
DIGITS_MODEL = ModelSpec("digits", DIGITS_LAYERS, (1, 8, 8), 10)

# The same CNN with a batch norm after the first convolution: the task that shows running
# statistics travelling and aggregating (``ftte bench batchnorm``, docs/benchmarks.md).
DIGITS_BN_LAYERS = (DIGITS_LAYERS[0], BatchNorm2d(16), *DIGITS_LAYERS[1:])
DIGITS_BN_MODEL = ModelSpec("digits_bn", DIGITS_BN_LAYERS, (1, 8, 8), 10)


def _augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift each 8x8 image by up to one pixel, rescale its intensity and add noise."""
    out = np.zeros_like(images)
    shifts = rng.integers(-1, 2, size=(len(images), 2))
    for i, (dy, dx) in enumerate(shifts):
        shifted = np.roll(images[i], (dy, dx), axis=(0, 1))
        if dy == 1:
            shifted[0, :] = 0
        elif dy == -1:
            shifted[-1, :] = 0
        if dx == 1:
            shifted[:, 0] = 0
        elif dx == -1:
            shifted[:, -1] = 0
        out[i] = shifted
    out *= rng.uniform(0.8, 1.2, size=(len(images), 1, 1))
    out += rng.normal(0.0, 0.05, size=out.shape)
    return np.clip(out, 0.0, 1.0)


def digits_task(
    num_devices: int = 20, seed: int = 0, alpha: float = 0.5, samples_per_device: int = 60
) -> Task:
    """The digits task with ``num_devices`` Dirichlet(alpha) label-skewed partitions."""
    # Imported here: scikit-learn (with scipy) costs 1.3 s at start-up, and a device that
    # only needs the model spec (DIGITS_MODEL) never builds the dataset.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)
    labels = bunch.target.astype(np.int64)
    train_x, val_x, train_y, val_y = train_test_split(
        images, labels, test_size=0.25, stratify=labels, random_state=0
    )
    rng = np.random.default_rng(seed)
    needed = num_devices * samples_per_device
    pool_x, pool_y = [train_x], [train_y]
    while sum(len(y) for y in pool_y) < needed:
        pool_x.append(_augment(train_x, rng))
        pool_y.append(train_y)
    x = np.concatenate(pool_x)[:, None, :, :].astype(np.float32)
    y = np.concatenate(pool_y)
    parts = dirichlet_partition(y, num_devices, alpha, rng, samples_per_device)
    return Task(
        model=DIGITS_MODEL,
        devices=[Dataset(x[p], y[p]) for p in parts],
        validation=Dataset(val_x[:, None, :, :].astype(np.float32), val_y),
        target=TARGET_ACCURACY,
    )


def digits_bn_task(
    num_devices: int = 20, seed: int = 0, alpha: float = 0.5, samples_per_device: int = 60
) -> Task:
    """The digits task's data with ``DIGITS_BN_MODEL``, the CNN with one batch norm."""
    task = digits_task(num_devices, seed, alpha, samples_per_device)
    return replace(task, model=DIGITS_BN_MODEL)
