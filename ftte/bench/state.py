"""``ftte bench state``: replay protection and checkpoints stay bounded as updates accumulate.

A server with a fleet of ``devices`` takes rounds of real encoded updates (one per device,
each answering its open assignment) until ``updates`` have been accepted. At every
``every`` accepted updates it takes a checkpoint the way the service does
(``save_state(state_dict())``) and records the checkpoint's size and the time it took, the
packed size of the server's state without the model, and the process's peak RSS. Bounded
means: flat in the number of accepted updates (replay protection is one assignment id per
device), not growing with it as a set of every update id seen would.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import torch

from ftte.bench import publish
from ftte.tasks import load_task
from ftte.wire import encode_update
from orchestrator.checkpoint import save_state
from orchestrator.presets import make_server


def state_benchmark(devices: int, updates: int, every: int, seed: int = 0) -> dict[str, Any]:
    """Checkpoint size and time, state size and peak RSS at every ``every`` updates."""
    task = load_task("digits", num_devices=2, seed=seed)
    server = make_server("ftte", task, strategy_params={"buffer_size": 50})
    budget = server.full_model_peak()
    for i in range(devices):
        server.register(f"d{i:05d}", budget)
    rng = np.random.default_rng(seed)
    points = []
    now = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        while server.accepted < updates:
            now += 1.0
            for a in server.dispatch(rng, now):
                delta = {n: np.full(server.shapes[n], 1e-6, np.float32) for n in a.trainable}
                update = a.answer(delta, num_samples=60, loss=1.0, peak_mem_bytes=0)
                payload = encode_update(update, a.train.delta_encoding)
                if not server.ingest(a.device_id, payload).accepted:
                    raise RuntimeError(f"benchmark update refused: {dict(server.rejected)}")
                if server.accepted % every == 0:
                    points.append(_measure(server, Path(tmp), time.perf_counter() - started))
                if server.accepted >= updates:
                    break
    return {"devices": devices, "updates": updates, "every": every, "points": points}


def _measure(server: Any, folder: Path, elapsed_s: float) -> dict[str, Any]:
    state = server.state_dict()
    t0 = time.perf_counter()
    path = save_state(folder, state)
    checkpoint_s = time.perf_counter() - t0
    state["params"] = {}
    without_model = len(msgpack.packb(state, default=lambda a: a.tobytes(), use_bin_type=True))
    return {
        "accepted": server.accepted,
        "version": server.version,
        "checkpoint_bytes": path.stat().st_size,
        "checkpoint_s": checkpoint_s,
        "state_bytes_without_model": without_model,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "elapsed_s": elapsed_s,
    }


def format_table(results: dict[str, Any]) -> str:
    """One row per measurement point."""
    lines = [
        f"{results['devices']} devices; a checkpoint every {results['every']} accepted updates",
        f"{'accepted':>10s} {'version':>8s} {'ckpt bytes':>11s} {'ckpt ms':>8s} "
        f"{'state w/o model':>15s} {'peak RSS MB':>11s}",
    ]
    for p in results["points"]:
        lines.append(
            f"{p['accepted']:10d} {p['version']:8d} {p['checkpoint_bytes']:11d} "
            f"{p['checkpoint_s'] * 1000:8.1f} {p['state_bytes_without_model']:15d} "
            f"{p['peak_rss_bytes'] / 2**20:11.1f}"
        )
    return "\n".join(lines)


def run_state_benchmark(args: argparse.Namespace) -> int:
    """Run for the CLI's arguments, print the table and write JSON."""
    torch.set_num_threads(1)
    results = state_benchmark(args.devices, args.updates, args.every)
    publish(results, format_table(results), args.json)
    return 0
