"""Non-IID partitioning of labelled samples across devices by Dirichlet(alpha) over labels."""

from __future__ import annotations

import numpy as np


def dirichlet_partition(
    labels: np.ndarray,
    num_devices: int,
    alpha: float,
    rng: np.random.Generator,
    per_device: int,
) -> list[np.ndarray]:
    """Give each device ``per_device`` sample indices with label mix ~ Dirichlet(alpha).

    Each device draws its own class proportions; small ``alpha`` concentrates a device on a
    few classes (label skew), large ``alpha`` approaches the global mix. Indices are drawn
    without replacement from the pool of each class; when a class runs out, the device's
    remaining samples come from the classes that still have samples, so every device gets
    exactly ``per_device`` and no index is used twice.
    """
    if num_devices < 1:
        raise ValueError("num_devices must be at least 1")
    if alpha <= 0:
        raise ValueError("alpha must be positive")
    if per_device < 1:
        raise ValueError("per_device must be at least 1")
    if num_devices * per_device > len(labels):
        raise ValueError(
            f"{num_devices} devices x {per_device} samples exceed the {len(labels)} available"
        )
    classes = np.unique(labels)
    pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in classes}
    parts = []
    for _ in range(num_devices):
        mix = rng.dirichlet(np.full(len(classes), alpha))
        counts = rng.multinomial(per_device, mix)
        chosen: list[int] = []
        for c, k in zip(classes, counts, strict=True):
            take = min(int(k), len(pools[c]))
            chosen += [pools[c].pop() for _ in range(take)]
        while len(chosen) < per_device:
            left = [c for c in classes if pools[c]]
            weights = np.array([mix[np.searchsorted(classes, c)] for c in left]) + 1e-12
            c = left[int(rng.choice(len(left), p=weights / weights.sum()))]
            chosen.append(pools[c].pop())
        parts.append(np.array(sorted(chosen), dtype=np.int64))
    return parts


def check_generation(num_devices: int, per_device: int, alpha: float) -> None:
    """Refuse arguments no generated task can honour."""
    if num_devices < 1 or per_device < 1:
        raise ValueError("num_devices and samples_per_device must be at least 1")
    if alpha <= 0:
        raise ValueError("alpha must be positive")


def dirichlet_labels(
    classes: int, per_device: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """For generated data: one device's labels, its class mix drawn from Dirichlet(alpha)
    (the skew ``dirichlet_partition`` gives a fixed pool)."""
    mix = rng.dirichlet(np.full(classes, alpha))
    labels: np.ndarray = rng.choice(classes, size=per_device, p=mix).astype(np.int64)
    return labels
