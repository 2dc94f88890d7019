"""What serving a release costs a device: lean numpy, onnxruntime and torch on one release.

One release per task (the model's seeded initial values, sent through the release codec as
the orchestrator publishes it) and one set of windows. Each path runs in a fresh process
that imports only what it needs, as a sensing application would:

- ``lean``: ``edge_agent.predict.Predictor`` on the lean runtime (numpy, what the agent
  ships by default);
- ``torch``: the same ``Predictor`` on the torch runtime (the reference);
- ``onnxruntime``: the release exported to ONNX (``ftte release export``) in an
  ``onnxruntime.InferenceSession``, softmax applied as ``Predictor`` does.

Each reports its resident set after loading (imports + model + release) and at its peak,
the latency of one window (median and p99 of ``--windows`` calls of batch 1), the time per
window at batch 64, and the largest difference of its class scores from the lean path's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ftte.bench import publish

PATHS = ("lean", "onnxruntime", "torch")
BATCH = 64


def worker(path: str, task: str, folder: Path, windows: int) -> int:
    """One serving path in this (fresh) process: load, time, report JSON on stdout."""
    from edge_agent.process import process_memory, rss_bytes

    x = np.load(folder / "windows.npy")
    if path == "onnxruntime":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # as the agent's runtimes: one compute thread
        session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options)

        def outputs(x: np.ndarray) -> np.ndarray:
            (logits,) = session.run(None, {"x": x})
            return np.asarray(logits)
    else:
        from edge_agent.predict import Predictor
        from edge_agent.releases import DeviceReleases
        from edge_agent.runtime import make_trainer, single_threaded
        from ftte.tasks import load_model_spec

        single_threaded(path)
        spec = load_model_spec(task)
        release, sha256 = DeviceReleases(folder / "releases", spec).current()
        predictor = Predictor(make_trainer(spec, path), release, sha256, spec.objective)
        outputs = predictor.outputs

    def predict(x: np.ndarray) -> np.ndarray:
        """Class scores, as the classification objective's predictions give them."""
        logits = outputs(x)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        scores: np.ndarray = shifted / shifted.sum(axis=1, keepdims=True)
        return scores

    loaded_rss = rss_bytes()
    predict(x[:1])  # first call: lazy initialisation is not a window's latency
    latencies = []
    for i in range(windows):
        started = time.perf_counter()
        predict(x[i % len(x) : i % len(x) + 1])
        latencies.append(time.perf_counter() - started)
    started = time.perf_counter()
    scores = predict(x[:BATCH])
    batch_s = time.perf_counter() - started
    np.save(folder / f"scores-{path}.npy", scores)
    report = {
        "loaded_rss_bytes": loaded_rss,
        "peak_rss_bytes": process_memory().rss_peak_bytes,
        "torch_imported": "torch" in sys.modules,
        "latency_ms_p50": 1e3 * statistics.median(latencies),
        "latency_ms_p99": 1e3 * float(np.quantile(latencies, 0.99)),
        "batch_ms_per_window": 1e3 * batch_s / BATCH,
    }
    print(json.dumps(report))
    return 0


def _prepare(task: str, folder: Path) -> None:
    """The release as an agent keeps it, its ONNX export, and windows to score."""
    import torch

    from edge_agent.releases import DeviceReleases
    from ftte.tasks import load_model_spec
    from ftte.wire.codec import encode_release
    from ftte.wire.messages import Release
    from orchestrator.export import ExportFormat, export_release

    spec = load_model_spec(task)
    torch.manual_seed(0)
    model = spec.make_model()
    tensors = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    release = Release("bench", 1, spec.name, {"accuracy": 0.0}, tensors, time.time())
    DeviceReleases(folder / "releases", spec).receive(encode_release(release))
    export_release(release, spec, ExportFormat.ONNX, folder / "model.onnx")
    rng = np.random.default_rng(0)
    np.save(folder / "windows.npy", rng.normal(size=(BATCH, *spec.input_shape)).astype(np.float32))


def predict_benchmark(tasks: list[str], windows: int, repeats: int) -> dict[str, Any]:
    """Every path on every task, each in ``repeats`` fresh processes; medians reported."""
    results: dict[str, Any] = {"windows": windows, "repeats": repeats, "tasks": {}}
    for task in tasks:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            _prepare(task, folder)
            per_path: dict[str, Any] = {}
            for path in PATHS:
                runs = []
                for _ in range(repeats):
                    command = ["-m", "ftte.bench.predict", "--worker", path, task, str(folder)]
                    out = subprocess.run(
                        [sys.executable, *command, str(windows)],
                        capture_output=True,
                        text=True,
                        check=True,
                        timeout=600,
                    )
                    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                per_path[path] = {
                    key: statistics.median(r[key] for r in runs)
                    for key in runs[0]
                    if key != "torch_imported"
                } | {"torch_imported": any(r["torch_imported"] for r in runs)}
            lean = np.load(folder / "scores-lean.npy")
            for path in PATHS:
                other = np.load(folder / f"scores-{path}.npy")
                per_path[path]["max_abs_diff_vs_lean"] = float(np.abs(other - lean).max())
        torch_path = per_path["torch"]
        for path in PATHS:
            per_path[path]["ratio_vs_torch"] = {
                key: per_path[path][key] / torch_path[key]
                for key in ("loaded_rss_bytes", "peak_rss_bytes", "latency_ms_p50")
            }
        results["tasks"][task] = per_path
    return results


def format_table(results: dict[str, Any]) -> str:
    """The paths side by side, per task."""
    lines = [
        "| task | path | loaded RSS MiB | peak RSS MiB | window p50 / p99 ms | ms/window at 64 "
        "| RSS vs torch | p50 vs torch | torch loaded | max |score − lean| |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task, paths in results["tasks"].items():
        for path, r in paths.items():
            lines.append(
                f"| {task} | {path} | {r['loaded_rss_bytes'] / 2**20:.1f} "
                f"| {r['peak_rss_bytes'] / 2**20:.1f} "
                f"| {r['latency_ms_p50']:.3f} / {r['latency_ms_p99']:.3f} "
                f"| {r['batch_ms_per_window']:.3f} "
                f"| {r['ratio_vs_torch']['peak_rss_bytes']:.3f} "
                f"| {r['ratio_vs_torch']['latency_ms_p50']:.3f} "
                f"| {'yes' if r['torch_imported'] else 'no'} | {r['max_abs_diff_vs_lean']:.1e} |"
            )
    return "\n".join(lines)


def run_predict_benchmark(args: argparse.Namespace) -> int:
    """``ftte bench predict``."""
    results = predict_benchmark(args.tasks, args.windows, args.repeats)
    publish(results, format_table(results), args.json)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["--worker"] or len(sys.argv) != 6:
        sys.exit("usage: python -m ftte.bench.predict --worker PATH TASK FOLDER WINDOWS")
    sys.exit(worker(sys.argv[2], sys.argv[3], Path(sys.argv[4]), int(sys.argv[5])))
