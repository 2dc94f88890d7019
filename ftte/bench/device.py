"""What one device pays: an agent's assignments in a fresh process per runtime and preset.

For each training runtime (lean, torch) and preset (ftte's slice for a small device against
FedAvg's whole model), a real ``TrainingServer`` in this process plans and encodes the
assignments of one device, and a fresh worker process (``python -m ftte.bench.device
--worker``), which imports only what the agent imports, decodes, trains and encodes them as
the agent does. The worker reports, per assignment: its process's peak resident set
(VmHWM), its resident anonymous memory (RssAnon), its current resident set (VmRSS), the CPU
time of decode + train + encode, the training's accounted peak (``peak_mem_bytes``) and
the bytes each way. Updates go back into the server, so the next assignment carries what
the server changed, as in the field. ``--flat N`` runs N assignments of the lean runtime
on the ftte slice and reports whether the resident set grows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from ftte.bench import publish

if TYPE_CHECKING:
    from ftte.tasks.base import Task

PRESETS = ("ftte", "fedavg")
RUNTIMES = ("lean", "torch")
DEVICE = "dev-0"
# The simulator's weakest device (ftte.sim.fleet.FleetSpec.weakest_fraction): the device
# whose training budget is this share of what training the whole model needs.
BUDGET_FRACTION = 0.12
WARMUP = 10  # assignments before the resident set is taken as settled (allocator pools)


def _send(stream: IO[bytes], payload: bytes) -> None:
    stream.write(struct.pack("<I", len(payload)))
    stream.write(payload)
    stream.flush()


def _receive(stream: IO[bytes]) -> bytes | None:
    header = stream.read(4)
    if len(header) < 4:
        return None
    (size,) = struct.unpack("<I", header)
    return stream.read(size)


def worker(runtime: str, task: str, data_path: str) -> int:
    """The device side: train each assignment read from stdin, answer on stdout."""
    # Imported here, as the agent imports them: this module's parent side needs torch.
    from edge_agent.config import DataSection
    from edge_agent.data import LocalData
    from edge_agent.device import DeviceModel
    from edge_agent.process import process_memory, rss_bytes
    from edge_agent.runtime import single_threaded
    from ftte.tasks import load_model_spec
    from ftte.wire import decode_assignment, encode_update

    inbox, outbox = sys.stdin.buffer, sys.stdout.buffer
    single_threaded(runtime)  # as the agent's main does
    after_imports = rss_bytes()
    # A sensor file, as in the field (the demo's partition source would build the task's
    # whole dataset, and for digits import scikit-learn, in every agent).
    spec = load_model_spec(task)
    data = LocalData(DataSection(task=task, path=Path(data_path)), spec).read()
    model = DeviceModel(spec, runtime)
    start = {
        "imports_rss_bytes": after_imports,
        "baseline_rss_bytes": rss_bytes(),
        "torch_imported": "torch" in sys.modules,
    }
    _send(outbox, json.dumps(start).encode())
    seed = 0
    while (payload := _receive(inbox)) is not None:
        cpu = time.process_time()
        assignment = decode_assignment(payload)
        update, result = model.train(assignment, data, seed=seed)
        answer = encode_update(update, assignment.train.delta_encoding)
        cpu = time.process_time() - cpu
        seed += 1
        process = process_memory()
        _send(outbox, answer)
        report = {
            "cpu_s": cpu,
            "rss_peak_bytes": process.rss_peak_bytes,
            "rss_anon_bytes": process.rss_anon_bytes,
            "rss_bytes": rss_bytes(),
            "train_peak_bytes": result.peak_mem_bytes,
            "trained_tensors": len(assignment.trainable),
        }
        _send(outbox, json.dumps(report).encode())
    return 0


def _run(
    runtime: str,
    preset: str,
    task: Task,
    data_path: Path,
    assignments: int,
    ram_bytes: int | None = None,
) -> dict[str, Any]:
    """One fresh worker process answering ``assignments`` of a real server; the device's
    budget is a device class's (``ram_bytes``) or ``BUDGET_FRACTION`` of the full model's."""
    from ftte.sim.fleet import class_training_budget
    from ftte.wire import encode_assignment
    from orchestrator.presets import make_server

    server = make_server(preset, task, seed=0, run_tag="bench")
    rng = np.random.default_rng(0)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ftte.bench.device",
            "--worker",
            runtime,
            task.name,
            str(data_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        start = json.loads(_receive(proc.stdout) or b"{}")
        if ram_bytes is None:
            budget = int(BUDGET_FRACTION * server.full_model_peak())
        else:  # what this process has left once loaded, as the agent announces it
            budget = class_training_budget(ram_bytes, start["baseline_rss_bytes"])
        server.register(DEVICE, budget)
        rows, down, up = [], [], []
        for _ in range(assignments):
            (assignment,) = server.dispatch(rng, 0.0)
            payload = encode_assignment(assignment, server.config.model_encoding)
            _send(proc.stdin, payload)
            answer = _receive(proc.stdout)
            report = _receive(proc.stdout)
            if answer is None or report is None:
                raise RuntimeError(f"worker {runtime}/{preset} ended early")
            outcome = server.ingest(DEVICE, answer)
            if not outcome.accepted:
                raise RuntimeError(f"update refused: {outcome.reason}")
            down.append(len(payload))
            up.append(len(answer))
            rows.append(json.loads(report))
    finally:
        proc.stdin.close()
        proc.wait(60)
    settled = rows[min(WARMUP, len(rows) - 1) :]
    return {
        **start,
        "budget_bytes": budget,
        "assignments": assignments,
        "trained_tensors": rows[-1]["trained_tensors"],
        "rss_peak_bytes": rows[-1]["rss_peak_bytes"],
        "rss_anon_bytes_steady": int(np.median([r["rss_anon_bytes"] for r in settled])),
        "rss_bytes_settled": settled[0]["rss_bytes"],
        "rss_bytes_last": rows[-1]["rss_bytes"],
        "train_peak_bytes_max": max(r["train_peak_bytes"] for r in rows),
        "cpu_s_per_assignment": float(np.median([r["cpu_s"] for r in rows])),
        "bytes_down_per_assignment": float(np.mean(down)),
        "bytes_up_per_assignment": float(np.mean(up)),
    }


RATIOS = (
    ("rss_peak_bytes", "process RSS peak"),
    ("rss_anon_bytes_steady", "process RSS anonymous"),
    ("train_peak_bytes_max", "training peak (accounted)"),
    ("cpu_s_per_assignment", "CPU s per assignment"),
    ("bytes_down_per_assignment", "bytes down per assignment"),
    ("bytes_up_per_assignment", "bytes up per assignment"),
)


def run_device_benchmark(args: argparse.Namespace) -> int:
    """``ftte bench device``: every runtime x preset, then the optional RSS-flat check."""
    from ftte.sim.fleet import MIB
    from ftte.tasks import load_task

    task = load_task(args.task, num_devices=20, seed=0)
    folder = Path(tempfile.mkdtemp(prefix="ftte-bench-device-"))
    data_path = folder / "windows.npz"
    np.savez(data_path, x=task.devices[0].x, y=task.devices[0].y)
    ram = None if args.ram_mib is None else args.ram_mib * MIB
    runs = {
        f"{runtime}/{preset}": _run(runtime, preset, task, data_path, args.assignments, ram)
        for runtime in args.runtimes
        for preset in PRESETS
    }
    ratios = {
        runtime: {
            key: runs[f"{runtime}/ftte"][key] / runs[f"{runtime}/fedavg"][key] for key, _ in RATIOS
        }
        for runtime in args.runtimes
    }
    results: dict[str, Any] = {
        "task": args.task,
        "budget_fraction": None if ram else BUDGET_FRACTION,
        "ram_mib": args.ram_mib,
        "runs": runs,
        "ftte_over_fedavg": ratios,
    }
    if "lean" in args.runtimes and "torch" in args.runtimes:
        results["lean_over_torch"] = {
            preset: runs[f"lean/{preset}"]["rss_peak_bytes"]
            / runs[f"torch/{preset}"]["rss_peak_bytes"]
            for preset in PRESETS
        }
    if args.flat:
        flat = _run("lean", "ftte", task, data_path, args.flat, ram)
        growth = flat["rss_bytes_last"] - flat["rss_bytes_settled"]
        results["flat"] = {**flat, "rss_growth_bytes": growth}
    shutil.rmtree(folder)
    publish(results, _table(results), args.json)
    return 0


def _table(results: dict[str, Any]) -> str:
    mib = 1024 * 1024
    if results["ram_mib"] is None:
        device = f"{results['budget_fraction']:.2f} of full-model training memory"
    else:
        device = f"what a {results['ram_mib']} MiB device class leaves after the runtime"
    lines = [
        f"task {results['task']}, one device with {device} as its training budget",
        f"{'run':14s} {'imports':>8s} {'baseline':>8s} {'budget':>8s} {'RSS peak':>8s} "
        f"{'anon':>8s} {'train pk':>9s} {'CPU ms':>7s} {'down B':>8s} {'up B':>7s}",
    ]
    for name, r in results["runs"].items():
        lines.append(
            f"{name:14s} {r['imports_rss_bytes'] / mib:7.1f}M "
            f"{r['baseline_rss_bytes'] / mib:7.1f}M {r['budget_bytes'] / mib:7.1f}M "
            f"{r['rss_peak_bytes'] / mib:7.1f}M {r['rss_anon_bytes_steady'] / mib:7.1f}M "
            f"{r['train_peak_bytes_max'] / 1024:8.0f}K {1000 * r['cpu_s_per_assignment']:7.1f} "
            f"{r['bytes_down_per_assignment']:8.0f} {r['bytes_up_per_assignment']:7.0f}"
        )
    for runtime, ratios in results["ftte_over_fedavg"].items():
        lines.append(f"ftte / FedAvg, {runtime} runtime:")
        lines.extend(f"  {label:28s} {ratios[key]:.3f}" for key, label in RATIOS)
    for preset, ratio in results.get("lean_over_torch", {}).items():
        lines.append(f"lean / torch process RSS peak, {preset}: {ratio:.3f}")
    if "flat" in results:
        f = results["flat"]
        lines.append(
            f"RSS over {f['assignments']} assignments (lean, ftte): "
            f"{f['rss_bytes_settled'] / mib:.1f}M after {WARMUP}, "
            f"{f['rss_bytes_last'] / mib:.1f}M at the end "
            f"({f['rss_growth_bytes'] / 1024:+.0f} KiB)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        sys.exit(worker(sys.argv[2], sys.argv[3], sys.argv[4]))
    sys.exit("usage: python -m ftte.bench.device --worker RUNTIME TASK DATA.npz")
