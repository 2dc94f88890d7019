"""Synthetic pump vibration logs: normal running for training, injected faults to test on.

One CSV per device with a header: a timestamp and the accelerometer reading at 400 Hz. A
pump vibrates at its shaft speed and twice that (each pump its own speed, 20–30 Hz, gain
and noise floor). Training logs (``--anomalies 0``) are normal running and carry no label,
as a pump's logger records it. Test logs (``--anomalies 0.1``) have faults injected into
about that share of 64-row stretches, with an ``anomaly`` column (1 on the faulty rows):

- bearing fault: impulses at 3.6x shaft speed, each ringing a 120–160 Hz resonance;
- cavitation: broadband noise bursts;
- imbalance: the shaft tone 2.5x as strong.

    python make_logs.py --out logs --devices 5 --seconds 120
    python make_logs.py --out test --devices 5 --seconds 30 --anomalies 0.1 --seed 1
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

RATE_HZ = 400
STRETCH = 64  # rows a fault lasts: one model window
PUMPS_SEED = 1234  # each device's pump (speed, gain, noise) is the same in every log


def pump(device: int) -> tuple[float, float, float]:
    """Shaft speed (Hz), gain and noise floor of a device's pump."""
    rng = np.random.default_rng(PUMPS_SEED + device)
    return rng.uniform(20, 30), rng.uniform(0.8, 1.2), rng.uniform(0.03, 0.06)


def vibration(
    device: int, seconds: float, anomalies: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Readings and per-row fault flags of ``device``'s pump."""
    shaft, gain, noise = pump(device)
    n = int(seconds * RATE_HZ)
    t = np.arange(n) / RATE_HZ
    speed = shaft * (1 + 0.01 * np.sin(2 * np.pi * t / 7.0))  # load changes the speed
    angle = 2 * np.pi * np.cumsum(speed) / RATE_HZ
    x = 0.5 * np.sin(angle) + 0.25 * np.sin(2 * angle + 0.7)
    faulty = np.zeros(n, dtype=np.int64)
    for start in range(0, n - STRETCH + 1, STRETCH):
        if rng.random() >= anomalies:
            continue
        rows = slice(start, start + STRETCH)
        kind = rng.integers(3)
        if kind == 0:  # bearing: decaying rings at 3.6x shaft speed
            period = 1.0 / (3.6 * shaft)
            since = np.mod(t[rows] + rng.uniform(0, period), period)
            ring = np.exp(-since * 80.0) * np.sin(2 * np.pi * rng.uniform(120, 160) * since)
            x[rows] += 0.6 * ring
        elif kind == 1:  # cavitation: broadband bursts
            x[rows] += rng.normal(0, 0.25, STRETCH)
        else:  # imbalance: a stronger shaft tone
            x[rows] += 1.5 * 0.5 * np.sin(angle[rows])
        faulty[rows] = 1
    x = gain * x + rng.normal(0, noise, n)
    return x, faulty


def write_log(path: Path, x: np.ndarray, faulty: np.ndarray | None) -> None:
    """A logger's CSV: ``time,accel`` and, for a test log, ``anomaly``."""
    start = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
    lines = ["time,accel" + (",anomaly" if faulty is not None else "")]
    for i, v in enumerate(x):
        stamp = (start + timedelta(seconds=i / RATE_HZ)).isoformat()
        lines.append(f"{stamp},{v:.4f}" + (f",{faulty[i]}" if faulty is not None else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    """Write ``--devices`` pumps' logs under ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("logs"))
    parser.add_argument("--devices", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--anomalies", type=float, default=0.0, help="share of faulty stretches")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for i in range(args.devices):
        x, faulty = vibration(i, args.seconds, args.anomalies, rng)
        labels = faulty if args.anomalies > 0 else None
        write_log(args.out / f"pump-{i}" / "vibration.csv", x, labels)


if __name__ == "__main__":
    main()
