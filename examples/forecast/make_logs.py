"""Synthetic greenhouse temperature logs, as a climate logger writes them.

One CSV per device with a header: a timestamp and the air temperature every 10 minutes.
Each greenhouse has its own mean, daily swing, time of the warmest hour and sensor noise,
and weather moves every one of them by a slow random drift (devices differ, as in the
field). The forecasting task predicts the next hour from the last eight.

    python make_logs.py --out logs --devices 5 --days 20
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

STEP_MIN = 10  # minutes between readings
PER_DAY = 24 * 60 // STEP_MIN


def temperatures(days: float, rng: np.random.Generator) -> np.ndarray:
    """``days`` of readings of one greenhouse, in degrees Celsius."""
    n = int(days * PER_DAY)
    t = np.arange(n) / PER_DAY  # days
    mean, swing = rng.uniform(16, 24), rng.uniform(3, 8)
    warmest = rng.uniform(13, 16) / 24  # of the day
    weather = np.zeros(n)
    for i in range(1, n):  # slow AR(1) drift: a few days of warm or cold weather
        weather[i] = 0.995 * weather[i - 1] + rng.normal(0, 0.08)
    daily = swing * np.cos(2 * np.pi * (t - warmest))
    return mean + daily + weather + rng.normal(0, rng.uniform(0.05, 0.2), n)


def write_log(path: Path, values: np.ndarray) -> None:
    """The readings as a logger's CSV: ``time,temperature``."""
    start = datetime(2026, 11, 1, tzinfo=UTC)
    lines = ["time,temperature"]
    for i, v in enumerate(values):
        lines.append(f"{(start + timedelta(minutes=STEP_MIN * i)).isoformat()},{v:.3f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    """Write ``--devices`` greenhouses' logs under ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("logs"))
    parser.add_argument("--devices", type=int, default=5)
    parser.add_argument("--days", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for i in range(args.devices):
        write_log(args.out / f"greenhouse-{i}" / "temperature.csv", temperatures(args.days, rng))


if __name__ == "__main__":
    main()
