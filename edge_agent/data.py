"""Local training data for the agent: sensor logs, files, a user's loader, or a partition."""

from __future__ import annotations

import importlib

import numpy as np

from edge_agent.config import DataSection
from ftte.sensors import SensorReader
from ftte.tasks import load_task
from ftte.tasks.base import Dataset, ModelSpec, check_dataset
from ftte.tasks.objectives import REGRESSION


class LocalData:
    """The device's samples and their targets, from whichever source the config names,
    checked against the model and its objective; sensor logs and loaders are read again at
    each ``read``, so what a logger appended is in the next assignment's data.

    Only the demo's ``partition`` source builds a task's data (all partitions, seeded the
    same as the orchestrator's, to take this device's); the others build nothing else.
    """

    def __init__(self, section: DataSection, model: ModelSpec) -> None:
        self.section = section
        self.model = model
        self._reader = SensorReader(section.sensors) if section.sensors is not None else None
        self._fixed: Dataset | None = None

    def read(self) -> Dataset:
        """The samples to train on now; a ValueError names the source and the fix."""
        section = self.section
        if self._reader is not None:
            data, source = self._reader.read(), f"data.sensors.path {self._reader.source.path}"
        elif section.loader is not None:
            data, source = _from_loader(section.loader, section), f"data.loader {section.loader}"
        else:
            if self._fixed is None:
                self._fixed = (
                    _from_file(section, self.model) if section.path else _partition(section)
                )
            data, source = self._fixed, f"data.path {section.path}"
        check_dataset(data, self.model, source)
        return data


def _partition(section: DataSection) -> Dataset:
    task = load_task(
        section.task,
        num_devices=section.num_partitions,
        seed=section.seed,
        samples_per_device=section.samples_per_device,
    )
    assert section.partition is not None  # DataSection guarantees exactly one source
    return task.devices[section.partition]


def _from_file(section: DataSection, model: ModelSpec) -> Dataset:
    path = section.path
    assert path is not None
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            x, y = f["x"], f["y"]
    elif path.suffix == ".csv":
        table = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
        x, y = table[:, None, :-1], table[:, -1]
    else:
        raise ValueError(
            f"data.path {path}: use an .npz (arrays x, y) or a .csv of windows; for a "
            "logger's CSV with a header, use [data.sensors]"
        )
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"data.path {path}: x and y must be non-empty and equally long")
    # Targets as the objective takes them: float values to regress on, else integer labels.
    kind = np.float32 if model.objective is REGRESSION else np.int64
    return Dataset(np.ascontiguousarray(x, dtype=np.float32), y.astype(kind))


def _from_loader(spec: str, section: DataSection) -> Dataset:
    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise ValueError(f"data.loader {spec!r}: use 'package.module:function'")
    data = getattr(importlib.import_module(module_name), func_name)(**section.loader_args)
    if not isinstance(data, Dataset):
        raise ValueError(f"data.loader {spec!r} must return ftte.tasks.base.Dataset")
    return data
