"""PNG plots of the paper benchmark: accuracy over virtual time, memory and payload bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: gateways and CI have no display
import matplotlib.pyplot as plt


def plot_paper(results: dict[str, Any], out_dir: Path, title: str) -> list[Path]:
    """Write accuracy-vs-time (titled ``title``) and memory/payload bar charts; return paths.

    The caller names the run (``ftte.bench.paper.setting``), so plots import nothing from
    the benchmark that calls them.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    task = results["task"]
    curve_path = out_dir / f"paper-{task}-accuracy.png"
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, runs) in enumerate(results["runs"].items()):
        for j, run in enumerate(runs):
            t = [p["t"] for p in run["curve"]]
            acc = [p["acc"] for p in run["curve"]]
            ax.plot(t, acc, color=f"C{i}", alpha=0.8, lw=1, label=name if j == 0 else None)
    target = next(iter(results["strategies"].values()))["target_accuracy"]
    ax.axhline(target, color="grey", ls="--", lw=0.8, label=f"target {target:.2f}")
    ax.axvline(results["time_budget_s"], color="grey", ls=":", lw=0.8, label="time budget")
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(curve_path, dpi=110)
    plt.close(fig)

    bars_path = out_dir / f"paper-{task}-memory-payload.png"
    names = list(results["strategies"])
    s = results["strategies"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.bar(names, [s[n]["peak_mem_bytes_max"] / 1024 for n in names], color="C0", label="max")
    left.bar(
        names, [s[n]["peak_mem_bytes_weakest"] / 1024 for n in names], color="C1", label="weakest"
    )
    left.set_ylabel("peak training memory (KiB)")
    left.legend()
    right.bar(names, [s[n]["bytes_up_per_update"] / 1024 for n in names], color="C2", label="up")
    right.set_ylabel("encoded bytes per update up (KiB)")
    for axis in (left, right):
        axis.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(bars_path, dpi=110)
    plt.close(fig)
    return [curve_path, bars_path]
