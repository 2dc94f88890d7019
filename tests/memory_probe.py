"""Measures the real peak of training slices; run in a fresh interpreter by the memory tests.

Usage: python -m tests.memory_probe '{"task": "digits", "slices": [[...], ...], "batch": 32,
"momentum": 0.9, "steps": 2}'. Prints a JSON list: for each slice, the peak bytes torch's CPU
allocator held while building the model and training ``steps`` steps the way the device
trainer does, from the profiler's memory events.
"""

import json
import sys

import torch

from edge_agent.trainer import train_slice
from ftte.memory import allocation_peak, allocator_trace
from ftte.tasks import load_task
from ftte.tasks.base import Dataset
from ftte.training import Optimizer
from ftte.wire.messages import TrainConfig


def measure(spec: dict, trainable: list[str]) -> int:
    """Peak allocator bytes of building the model and training ``trainable``."""
    task = load_task(spec["task"], num_devices=2, seed=0)
    n = spec["batch"] * spec["steps"]
    data = Dataset(task.devices[0].x[:n].copy(), task.devices[0].y[:n].copy())
    config = TrainConfig(
        epochs=1,
        batch_size=spec["batch"],
        lr=0.01,
        optimizer=Optimizer(spec.get("optimizer", "sgd")),
        momentum=spec["momentum"],
    )
    with allocator_trace() as prof:
        torch.manual_seed(0)
        model = task.model.make_model()
        train_slice(model, trainable, data, config, seed=0)
    return allocation_peak(prof)


def main() -> None:
    """Measure every slice named on the command line and print the peaks as JSON."""
    spec = json.loads(sys.argv[1])
    print(json.dumps([measure(spec, s) for s in spec["slices"]]))


if __name__ == "__main__":
    main()
