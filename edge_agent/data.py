"""Local training data for the agent: sensor files, a user's loader, or a demo partition."""

from __future__ import annotations

import importlib

import numpy as np

from edge_agent.config import DataSection
from ftte.tasks import load_task
from ftte.tasks.base import Dataset


def load_local_data(section: DataSection) -> Dataset:
    """The device's labelled samples, from whichever source the config names.

    Only the demo's ``partition`` source builds a task's data (all partitions, seeded the
    same as the orchestrator's, to take this device's); files and loaders build nothing else.
    """
    if section.path is not None:
        return _from_file(section)
    if section.loader is not None:
        return _from_loader(section.loader)
    task = load_task(
        section.task,
        num_devices=section.num_partitions,
        seed=section.seed,
        samples_per_device=section.samples_per_device,
    )
    assert section.partition is not None  # DataSection guarantees exactly one source
    return task.devices[section.partition]


def _from_file(section: DataSection) -> Dataset:
    path = section.path
    assert path is not None
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            x, y = f["x"], f["y"]
    elif path.suffix == ".csv":
        table = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
        x, y = table[:, None, :-1], table[:, -1]
    else:
        raise ValueError(f"data.path {path}: use an .npz (arrays x, y) or a .csv file")
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"data.path {path}: x and y must be non-empty and equally long")
    return Dataset(np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int64))


def _from_loader(spec: str) -> Dataset:
    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise ValueError(f"data.loader {spec!r}: use 'package.module:function'")
    data = getattr(importlib.import_module(module_name), func_name)()
    if not isinstance(data, Dataset):
        raise ValueError(f"data.loader {spec!r} must return ftte.tasks.base.Dataset")
    return data
