"""Simulated device profiles: speed, links, memory budget, availability, stragglers.

Choices (documented in docs/benchmarks.md, none taken from the FTTE paper's body, which is
not public to us):
- speed: a Raspberry-Pi-class core doing small-model training at 0.5–2 GFLOP/s effective,
  log-uniform;
- stragglers: a fraction (default 0.9, the paper's setting) is slowed by a factor drawn
  log-uniformly from [2, 20], the spread seen between a Pi 4 and a duty-cycled Pi Zero
  sharing its core with the sensing workload;
- links: uplink 0.05–2 Mbit/s and downlink 0.2–8 Mbit/s log-uniform (LTE-M to farm Wi-Fi),
  latency 50–400 ms;
- memory budgets (``budgets``): either ``"fraction"``, log-uniform between
  ``weakest_fraction`` and 1.0 of full-model training memory, so the weakest class can hold
  only a small slice; or ``"device-classes"``, what an agent has left to train in on a
  Raspberry Pi of 512 MB, 1 GB, 2 GB or 4 GB, in equal shares (``class_training_budget``):
  budgets that do not depend on the model, so a model can really be too large for a device;
- availability: on/off periods exponential with means ``mean_online_s``/``mean_offline_s``;
  on top, a device training vanishes mid-assignment (crash, reboot, lost link) after an
  exponential amount of work with mean ``mean_work_s_to_dropout``, so the chance of losing
  an assignment grows with its duration. (An earlier per-assignment probability charged a
  fleet of short assignments more dropouts per hour than one of long assignments, for the
  same devices; see docs/benchmarks.md.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_agent.process import MEMORY_SHARE

MIB = 1024 * 1024
BUDGET_MODES = ("fraction", "device-classes")
# RAM of the device classes: Raspberry Pi Zero 2 W, Pi 3 B / Pi 4 1 GB, Pi 4 2 GB, Pi 4 4 GB.
DEVICE_CLASSES_MIB = (512, 1024, 2048, 4096)
# Our assumption (docs/benchmarks.md): the GPU memory split, the kernel and an idle Raspberry
# Pi OS Lite take this much, so MemAvailable = RAM - 160 MiB (352 MiB on a Pi Zero 2 W).
SYSTEM_RESERVE_MIB = 160
# What the agent's process holds before training on the lean runtime with the highrate model
# and 32 windows loaded: the baseline RSS of `ftte bench device --task highrate`
# (docs/bench-device-highrate.json, lean runtime).
LEAN_BASELINE_BYTES = 54_673_408


@dataclass(frozen=True)
class DeviceProfile:
    """One simulated device."""

    device_id: str
    flops_per_s: float
    up_bytes_per_s: float
    down_bytes_per_s: float
    latency_s: float
    budget_bytes: int
    straggler: bool


@dataclass(frozen=True)
class FleetSpec:
    """Parameters of a simulated fleet."""

    devices: int = 20
    stragglers: float = 0.9
    slowdown_range: tuple[float, float] = (2.0, 20.0)
    weakest_fraction: float = 0.12
    mean_online_s: float = 3600.0
    mean_offline_s: float = 300.0
    mean_work_s_to_dropout: float | None = 600.0  # None: no mid-training dropouts
    budgets: str = "fraction"  # or "device-classes" (see the module docstring)
    runtime_baseline_bytes: int = LEAN_BASELINE_BYTES  # device classes: the agent's baseline

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ValueError("devices must be at least 1")
        if not 0.0 <= self.stragglers <= 1.0:
            raise ValueError("stragglers is a fraction in [0, 1]")
        if not 0.0 < self.weakest_fraction <= 1.0:
            raise ValueError("weakest_fraction is a fraction in (0, 1]")
        if self.mean_work_s_to_dropout is not None and self.mean_work_s_to_dropout <= 0:
            raise ValueError("mean_work_s_to_dropout must be positive (or None for no dropouts)")
        if self.budgets not in BUDGET_MODES:
            raise ValueError(f"budgets {self.budgets!r}: choose one of {BUDGET_MODES}")
        if self.budgets == "device-classes":
            smallest = class_training_budget(
                DEVICE_CLASSES_MIB[0] * MIB, self.runtime_baseline_bytes
            )
            if smallest <= 0:
                raise ValueError(
                    f"runtime_baseline_bytes = {self.runtime_baseline_bytes} leaves the "
                    f"{DEVICE_CLASSES_MIB[0]} MB class no training memory; measure it again"
                )


def class_training_budget(ram_bytes: int, baseline_bytes: int) -> int:
    """What an agent may train in on a device with ``ram_bytes`` of RAM: its share of the
    free memory (``MEMORY_SHARE``, as the agent takes by default; the sensing application
    keeps the rest) minus the runtime's own baseline (docs/architecture.md, Budgets)."""
    free = ram_bytes - SYSTEM_RESERVE_MIB * MIB
    return int(MEMORY_SHARE * free) - baseline_bytes


def _log_uniform(rng: np.random.Generator, low: float, high: float, n: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(low), np.log(high), n))


def make_fleet(spec: FleetSpec, full_training_bytes: int, seed: int) -> list[DeviceProfile]:
    """Draw ``spec.devices`` profiles; budgets relative to full-model training memory, or
    from the device classes (``spec.budgets``)."""
    rng = np.random.default_rng(seed)
    n = spec.devices
    speed = _log_uniform(rng, 0.5e9, 2e9, n)
    slow = np.zeros(n, dtype=bool)
    slow[rng.permutation(n)[: round(spec.stragglers * n)]] = True
    speed[slow] /= _log_uniform(rng, *spec.slowdown_range, int(slow.sum()))
    up = _log_uniform(rng, 0.05e6, 2e6, n) / 8
    down = _log_uniform(rng, 0.2e6, 8e6, n) / 8
    latency = rng.uniform(0.05, 0.4, n)
    if spec.budgets == "device-classes":
        ram = np.array(DEVICE_CLASSES_MIB)[rng.permutation(n) % len(DEVICE_CLASSES_MIB)] * MIB
        budget = np.array([class_training_budget(r, spec.runtime_baseline_bytes) for r in ram])
    else:
        budget = _log_uniform(rng, spec.weakest_fraction, 1.0, n) * full_training_bytes
        # One device of the weakest class always exists, so "weakest" means the same thing
        # across seeds and fleet sizes.
        budget[int(np.argmin(budget))] = spec.weakest_fraction * full_training_bytes
    width = len(str(n - 1))
    return [
        DeviceProfile(
            device_id=f"dev-{i:0{width}d}",
            flops_per_s=float(speed[i]),
            up_bytes_per_s=float(up[i]),
            down_bytes_per_s=float(down[i]),
            latency_s=float(latency[i]),
            budget_bytes=int(budget[i]),
            straggler=bool(slow[i]),
        )
        for i in range(n)
    ]
