"""``ftte bench aggregator``: how many updates per second the server's ingest path takes.

The path measured is the service's own, minus MQTT: ``TrainingServer.admit`` (bounded
decoding, shape, finiteness, replay and staleness checks) then ``settle`` (buffering, and
the strategy's aggregation every K updates), and, in a
second timing, the journal's append that the service makes before acknowledging, with one
fsync per ``MAX_BATCH`` updates (the service's group commit) and, for comparison, one per
update (the service before group commit).

With ingest workers (``[ingest] workers``) the path splits in two, each timed on its own:
``worker`` is what a worker process does per update (the bounded decoding, the check
against the model's shapes, the hand-off's encoding), ``owner_from_workers`` what stays
with the orchestrator (the hand-off's decoding, ``admit_decoded``, the journal with group
commit, ``settle``), on hand-offs the workers made before the timing.
The floor it is compared with is a raw loop over the same bytes: zstd decompress, msgpack
unpack, ``np.frombuffer``, dequantise, and ``param += w * delta`` into the model. Every
timing is repeated; medians and the ratio to the raw loop are reported, in wall time (what
a dedicated core gives, fsync waits included) and in the process's CPU time (steady when
other work shares the cores, but blind to the time spent waiting on the disk).

Deltas are random normal values of each device's planned slice: the timing depends on
their sizes, which are real (the planner's slices for a fleet drawn as the simulator draws
it), not on what they would teach the model.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import torch
import zstandard

from ftte.bench import publish
from ftte.sim.fleet import FleetSpec, make_fleet
from ftte.tasks import Task, load_task
from ftte.topics import update_topic
from ftte.wire import decode_update, encode_update
from orchestrator.checkpoint import Journal
from orchestrator.ingest.handoff import Handoff, decode_handoff, encode_handoff
from orchestrator.model_shapes import check_model_shapes
from orchestrator.presets import make_server, preset
from orchestrator.server import TrainingServer
from orchestrator.service import MAX_BATCH

FLEET = "bench"  # fleet name in the journal's topics, as the service writes them

PRESETS = ("ftte", "fedbuff")


@dataclass(frozen=True)
class Batch:
    """One dispatch round's updates, encoded, with the server they were made for."""

    server: TrainingServer
    payloads: list[tuple[str, bytes]]  # (device id, encoded update)


def make_batch(preset_name: str, task: Task, devices: int, seed: int) -> Batch:
    """A fresh server with ``devices`` registered, each with an open assignment answered."""
    server = make_server(preset_name, task)
    for profile in make_fleet(FleetSpec(devices=devices), server.full_model_peak(), seed):
        server.register(profile.device_id, profile.budget_bytes)
    rng = np.random.default_rng(seed)
    payloads = []
    for a in server.dispatch(rng, now=0.0):
        delta = {
            n: (rng.standard_normal(server.shapes[n]) * 1e-2).astype(np.float32)
            for n in a.trainable
        }
        update = a.answer(delta, num_samples=60, loss=1.0, peak_mem_bytes=0)
        payloads.append((a.device_id, encode_update(update, a.train.delta_encoding)))
    return Batch(server, payloads)


def ingest(batch: Batch, journal: Journal | None, fsync_each: bool = False) -> None:
    """The service's path for each payload: admit, (journal,) settle; the journal synced once
    per ``MAX_BATCH`` updates as the service's group commit does (``fsync_each``: once per
    update, as the service did before group commit)."""
    server = batch.server
    for i, (device_id, payload) in enumerate(batch.payloads):
        admitted = server.admit(device_id, payload)
        if journal is not None:
            journal.stage(update_topic(FLEET, device_id), payload)
            if fsync_each or (i + 1) % MAX_BATCH == 0:
                journal.sync()
        if not server.settle(admitted).accepted:
            raise RuntimeError(f"benchmark update refused: {server.rejected}")
    if journal is not None:
        journal.sync()


def handoff_batch(preset_name: str, task: Task, devices: int, seed: int) -> Batch:
    """``make_batch``'s updates as ingest workers hand them to the owner (made untimed)."""
    batch = make_batch(preset_name, task, devices, seed)
    handoffs = [
        (device_id, encode_handoff(Handoff("w", device_id, len(p), decode_update(p))))
        for device_id, p in batch.payloads
    ]
    return Batch(batch.server, handoffs)


def worker(batch: Batch) -> None:
    """A worker's part: decode, check against the model's shapes, encode the hand-off."""
    server = batch.server
    buffer_shapes = {n: server.shapes[n] for n in server.buffers}
    for device_id, payload in batch.payloads:
        update = decode_update(payload, server.limits)
        check_model_shapes(update, server.shapes, buffer_shapes)
        encode_handoff(Handoff("w", device_id, len(payload), update))


def owner_from_workers(batch: Batch, journal: Journal) -> None:
    """The owner's part with workers: read each hand-off, admit, journal, settle; one fsync
    per ``MAX_BATCH``."""
    server = batch.server
    for i, (device_id, data) in enumerate(batch.payloads):
        handoff = decode_handoff(data)
        admitted = server.admit_decoded(device_id, handoff.decoded)
        journal.stage(FLEET, data)
        if (i + 1) % MAX_BATCH == 0:
            journal.sync()
        if not server.settle(admitted).accepted:
            raise RuntimeError(f"benchmark update refused: {server.rejected}")
    journal.sync()


def raw_loop(batch: Batch) -> None:
    """The floor: decompress, unpack, dequantise and add each tensor into the model."""
    params = batch.server.params
    weight = np.float32(1.0 / len(batch.payloads))
    for _, payload in batch.payloads:
        doc = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(payload), raw=False)
        for name, t in doc["tensors"].items():
            values = np.frombuffer(t["data"], dtype=t["dtype"]).astype(np.float32)
            if "scale" in t:
                values *= np.float32(t["scale"])
            params[name] += weight * values.reshape(t["shape"])


def _time(
    runs: dict[str, tuple[Callable[[], Batch], Callable[[Batch], None]]], repeats: int
) -> dict[str, tuple[list[float], list[float]]]:
    """Wall and CPU seconds of each run, each on a fresh batch (a server takes an
    assignment's answer once). The paths take turns, one run each per round: the load of a
    shared box then weighs on every path alike, where a path's runs in a row met the load of
    their own minutes (measured: ratios moving by a few hundredths between runs)."""
    times: dict[str, tuple[list[float], list[float]]] = {path: ([], []) for path in runs}
    for _ in range(repeats):
        for path, (make, run) in runs.items():
            batch = make()
            started, started_cpu = time.perf_counter(), time.process_time()
            run(batch)
            times[path][0].append(time.perf_counter() - started)
            times[path][1].append(time.process_time() - started_cpu)
    return times


def aggregator_benchmark(
    task_name: str, devices: int, repeats: int, seed: int = 0
) -> dict[str, Any]:
    """Updates per second of the ingest path and of the raw loop, per preset; medians."""
    task = load_task(task_name, num_devices=devices, seed=seed)
    results: dict[str, Any] = {}
    for name in PRESETS:
        sample = make_batch(name, task, devices, seed)
        sizes = [len(p) for _, p in sample.payloads]
        with tempfile.TemporaryDirectory() as tmp:
            journal = Journal(Path(tmp))
            make = partial(make_batch, name, task, devices, seed)
            make_handoffs = partial(handoff_batch, name, task, devices, seed)
            both = _time(
                {
                    "raw_decode_axpy": (make, raw_loop),
                    "aggregator": (make, partial(ingest, journal=None)),
                    "aggregator_with_journal": (make, partial(ingest, journal=journal)),
                    "aggregator_with_journal_fsync_each": (
                        make,
                        partial(ingest, journal=journal, fsync_each=True),
                    ),
                    "worker": (make, worker),
                    "owner_from_workers": (
                        make_handoffs,
                        partial(owner_from_workers, journal=journal),
                    ),
                },
                repeats,
            )
            journal.close()
        n = len(sample.payloads)
        timings = {path: wall for path, (wall, _) in both.items()}
        rates = {path: n / statistics.median(t) for path, t in timings.items()}
        cpu_rates = {path: n / statistics.median(cpu) for path, (_, cpu) in both.items()}
        results[name] = {
            "updates_per_round": n,
            "delta_encoding": preset(name).delta_encoding.value,
            "bytes_per_update_mean": float(np.mean(sizes)),
            "updates_per_s": rates,
            "updates_per_s_spread": {path: [n / max(t), n / min(t)] for path, t in timings.items()},
            "ratio_to_raw": {path: rate / rates["raw_decode_axpy"] for path, rate in rates.items()},
            "updates_per_cpu_s": cpu_rates,
            "cpu_ratio_to_raw": {
                path: rate / cpu_rates["raw_decode_axpy"] for path, rate in cpu_rates.items()
            },
        }
    return {"task": task_name, "devices": devices, "repeats": repeats, "presets": results}


def format_table(results: dict[str, Any]) -> str:
    """Medians per preset and path, with the ratio to the raw loop."""
    lines = [
        f"task {results['task']}: {results['devices']} devices, one update each, "
        f"median of {results['repeats']} runs",
        f"{'preset':8s} {'path':36s} {'updates/s':>10s} {'ratio to raw':>12s} "
        f"{'upd/CPU s':>10s} {'CPU ratio':>9s} {'B/update':>9s}",
    ]
    for name, r in results["presets"].items():
        for path, rate in r["updates_per_s"].items():
            lines.append(
                f"{name:8s} {path:36s} {rate:10.0f} {r['ratio_to_raw'][path]:12.3f} "
                f"{r['updates_per_cpu_s'][path]:10.0f} {r['cpu_ratio_to_raw'][path]:9.3f} "
                f"{r['bytes_per_update_mean']:9.0f}"
            )
    return "\n".join(lines)


def run_aggregator_benchmark(args: argparse.Namespace) -> int:
    """Run the benchmark for the CLI's arguments, print the table and write JSON."""
    torch.set_num_threads(1)
    results = aggregator_benchmark(args.task, args.devices, args.repeats)
    publish(results, format_table(results), args.json)
    return 0
