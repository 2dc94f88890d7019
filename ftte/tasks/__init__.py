"""Tasks: model factories with per-device data, loaded offline, chosen by name or import path."""

from __future__ import annotations

import importlib
from typing import Any

from ftte.tasks.base import Dataset, ModelSpec, Task, TaskFactory, check_dataset
from ftte.tasks.digits import DIGITS_BN_MODEL, DIGITS_MODEL, digits_bn_task, digits_task
from ftte.tasks.highrate import HIGHRATE_MODEL, highrate_task
from ftte.tasks.vibration import VIBRATION_MODEL, vibration_task

TASKS: dict[str, TaskFactory] = {
    "digits": digits_task,
    "digits_bn": digits_bn_task,
    "vibration": vibration_task,
    "highrate": highrate_task,
}
MODELS: dict[str, ModelSpec] = {
    "digits": DIGITS_MODEL,
    "digits_bn": DIGITS_BN_MODEL,
    "vibration": VIBRATION_MODEL,
    "highrate": HIGHRATE_MODEL,
}

__all__ = ["MODELS", "TASKS", "Dataset", "ModelSpec", "Task", "load_model_spec", "load_task"]


def load_model_spec(spec: str) -> ModelSpec:
    """The model of a built-in task without building its data (what a device needs).

    A user's ``package.module:NAME`` may name a ``ModelSpec`` (nothing else is built) or a
    task factory (built once with one partition, for its spec).
    """
    if spec in MODELS:
        return MODELS[spec]
    module_name, _, attr = spec.partition(":")
    if module_name and attr:
        try:
            found = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"task {spec!r}: cannot import it ({exc})") from None
        if isinstance(found, ModelSpec):  # a device names the model alone: no data built
            return found
    return load_task(spec, num_devices=1, seed=0).model


def load_task(spec: str, num_devices: int, seed: int, alpha: float = 0.5, **kwargs: Any) -> Task:
    """A built-in task by name, or a user's factory as ``package.module:factory``."""
    if spec in TASKS:
        factory = TASKS[spec]
    elif ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"task {spec!r}: cannot import the factory ({exc})") from None
    else:
        raise ValueError(f"unknown task {spec!r}: use one of {sorted(TASKS)} or module:factory")
    try:
        task = factory(num_devices=num_devices, seed=seed, alpha=alpha, **kwargs)
    except TypeError as exc:
        raise ValueError(
            f"task factory {spec!r} must accept num_devices, seed and alpha and "
            f"return ftte.tasks.base.Task ({exc})"
        ) from None
    if not isinstance(task, Task):
        raise ValueError(f"task factory {spec!r} must return ftte.tasks.base.Task")
    if task.validation is not None:
        check_dataset(task.validation, task.model, f"task {spec!r} validation data")
    for i, data in enumerate(task.devices):
        check_dataset(data, task.model, f"task {spec!r} device partition {i}")
    return task
