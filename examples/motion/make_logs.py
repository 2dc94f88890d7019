"""Synthetic 6-channel motion logs, as a logger on a wearable or a machine writes them.

One CSV per day and device, with a header: a timestamp, three accelerometer and three
gyroscope channels at 50 Hz, and the activity being done (0 still, 1 walking, 2 running).
Each device does the activities in its own proportions (devices differ, as in the field),
and ``lab.csv`` is a balanced recording for checking a model.

    python make_logs.py --out logs --devices 3 --seconds 240
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

RATE_HZ = 50
CHANNELS = ["ax", "ay", "az", "gx", "gy", "gz"]


def activity_rows(activity: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """``seconds`` of the six channels while doing ``activity``."""
    t = np.arange(int(seconds * RATE_HZ)) / RATE_HZ
    noise = rng.normal(0.0, 0.05, (len(t), 6))
    rows = noise + np.array([0.0, 0.0, 1.0, 0.0, 0.0, 0.0])  # gravity on az
    if activity:
        hz, amplitude = (1.8, 0.4) if activity == 1 else (3.2, 1.1)
        phase = rng.uniform(0, 2 * np.pi)
        step = np.sin(2 * np.pi * hz * t + phase)
        rows[:, 0] += amplitude * step
        rows[:, 2] += 0.5 * amplitude * np.abs(step)
        rows[:, 4] += 0.8 * amplitude * np.cos(2 * np.pi * hz * t + phase)
    return rows


def write_log(path: Path, mix: list[float], seconds: float, rng: np.random.Generator) -> None:
    """A day's log: 10-second bouts of activities drawn with probabilities ``mix``."""
    start = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    lines = ["time," + ",".join(CHANNELS) + ",activity"]
    row = 0
    for _ in range(int(seconds // 10)):
        activity = int(rng.choice(3, p=mix))
        for values in activity_rows(activity, 10.0, rng):
            stamp = (start + timedelta(seconds=row / RATE_HZ)).isoformat()
            lines.append(f"{stamp}," + ",".join(f"{v:.4f}" for v in values) + f",{activity}")
            row += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    """Write ``--devices`` devices' logs and a balanced lab recording under ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("logs"))
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for i in range(args.devices):
        mix = rng.dirichlet([1.0, 1.0, 1.0]) * 0.7 + 0.1  # every activity, in its own share
        write_log(args.out / f"motion-{i}" / "day-1.csv", list(mix), args.seconds, rng)
    write_log(args.out / "lab.csv", [1 / 3] * 3, args.seconds, rng)


if __name__ == "__main__":
    main()
