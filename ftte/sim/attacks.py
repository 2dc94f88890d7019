"""Hostile devices for the simulator: finite updates built to hurt the global model.

A hostile device trains like any other (so its update answers its assignment and passes
every wire check) and then corrupts what it sends. The kinds are the ones issue #13 probed
with real credentials: a huge sample count, a huge delta, a flipped (and boosted) delta,
and all three at once; and, as the control run they are measured against, the same devices
absent (never online), so the fleet loses their data but suffers no attack.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

import numpy as np

from ftte.wire.messages import Update

HUGE_SAMPLES = 2**53  # the largest count the wire accepts
HUGE_VALUE = 1e30  # largest |value| of a scaled delta: finite in float32 and in int8 scales
FLIP_BOOST = 4.0  # a flipped delta is also stretched, to push past a norm bound


class Attack(Enum):
    """What a hostile device does to its honest update."""

    SAMPLES = "samples"  # claims 2**53 samples
    SCALE = "scale"  # scales the delta up to 1e30
    FLIP = "flip"  # sends -4 × the delta
    ALL = "all"  # 2**53 samples and -1e30-scaled delta
    ABSENT = "absent"  # never comes online: the fleet without these devices (a control)


@dataclass(frozen=True)
class AttackSpec:
    """``devices`` hostile devices of the fleet, each doing ``kind``."""

    kind: Attack
    devices: int

    def __post_init__(self) -> None:
        if self.devices < 0:
            raise ValueError("attack devices must be >= 0")


def corrupt(update: Update, attack: Attack) -> Update:
    """The update a hostile device sends instead of ``update``."""
    if attack is Attack.ABSENT:
        raise ValueError("an absent device sends nothing")
    samples = HUGE_SAMPLES if attack in (Attack.SAMPLES, Attack.ALL) else update.num_samples
    if attack is Attack.SAMPLES:
        return replace(update, num_samples=samples)
    largest = max(float(np.abs(d).max()) for d in update.delta.values()) or 1.0
    factor = {
        Attack.SCALE: HUGE_VALUE / largest,
        Attack.FLIP: -FLIP_BOOST,
        Attack.ALL: -HUGE_VALUE / largest,
    }[attack]
    delta = {n: (d.astype(np.float64) * factor).astype(np.float32) for n, d in update.delta.items()}
    return replace(update, delta=delta, num_samples=samples)


def hostile_devices(device_ids: list[str], spec: AttackSpec, seed: int) -> dict[str, Attack]:
    """Which devices are hostile: ``spec.devices`` of them, drawn with the run's seed."""
    if spec.devices > len(device_ids):
        raise ValueError(f"{spec.devices} hostile devices in a fleet of {len(device_ids)}")
    rng = np.random.default_rng([seed, 13])
    chosen = rng.choice(len(device_ids), size=spec.devices, replace=False)
    return {device_ids[i]: spec.kind for i in sorted(chosen)}
