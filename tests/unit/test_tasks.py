"""Tasks load offline, deterministically, non-IID, with separate validation data."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from ftte.tasks import load_task
from ftte.tasks.base import Dataset, check_dataset
from ftte.tasks.digits import DIGITS_MODEL
from ftte.tasks.layers import Flatten, Linear, TorchLayer
from ftte.tasks.partition import dirichlet_partition
from orchestrator.presets import make_server


@pytest.mark.parametrize("name", ["digits", "vibration"])
def test_same_seed_same_data(name):
    a = load_task(name, num_devices=5, seed=3)
    b = load_task(name, num_devices=5, seed=3)
    for da, db in zip(a.devices, b.devices, strict=True):
        np.testing.assert_array_equal(da.x, db.x)
        np.testing.assert_array_equal(da.y, db.y)


@pytest.mark.parametrize("name", ["digits", "vibration"])
def test_different_seed_different_partitions(name):
    a = load_task(name, num_devices=5, seed=1)
    b = load_task(name, num_devices=5, seed=2)
    assert any(not np.array_equal(x.y, y.y) for x, y in zip(a.devices, b.devices, strict=True))


@pytest.mark.parametrize("name", ["digits", "vibration"])
def test_shapes_dtypes_and_model_output(name):
    task = load_task(name, num_devices=3, seed=0, samples_per_device=40)
    for d in task.devices:
        assert d.x.shape == (40, *task.model.input_shape) and d.x.dtype == np.float32
        assert d.y.dtype == np.int64 and d.y.max() < task.model.num_classes
    out = task.model.make_model()(torch.from_numpy(task.validation.x[:7]))
    assert out.shape == (7, task.model.num_classes)


def test_partition_uses_each_index_once_and_fills_every_device():
    labels = np.repeat(np.arange(10), 50)
    parts = dirichlet_partition(labels, 20, 0.3, np.random.default_rng(0), per_device=20)
    joined = np.concatenate(parts)
    assert len(joined) == len(set(joined.tolist())) == 400
    assert all(len(p) == 20 for p in parts)


def mean_label_entropy(alpha: float) -> float:
    labels = np.repeat(np.arange(10), 400)
    parts = dirichlet_partition(labels, 50, alpha, np.random.default_rng(0), per_device=40)
    entropies = []
    for p in parts:
        freq = np.bincount(labels[p], minlength=10) / len(p)
        freq = freq[freq > 0]
        entropies.append(-(freq * np.log(freq)).sum())
    return float(np.mean(entropies))


def test_smaller_alpha_skews_labels_more():
    assert mean_label_entropy(0.1) < mean_label_entropy(1.0) < mean_label_entropy(100.0)


def test_partition_refuses_more_samples_than_exist():
    with pytest.raises(ValueError, match="exceed"):
        dirichlet_partition(np.zeros(10), 3, 0.5, np.random.default_rng(0), per_device=4)


def test_digits_validation_images_never_reach_a_device():
    task = load_task("digits", num_devices=30, seed=0)
    train = {d.x[i].tobytes() for d in task.devices for i in range(len(d))}
    assert not any(v.tobytes() in train for v in task.validation.x)


@pytest.mark.parametrize("name", ["vibration", "digits"])
def test_five_hundred_devices_each_get_the_same_nonzero_share(name):
    task = load_task(name, num_devices=500, seed=0)
    assert len(task.devices) == 500
    (share,) = {len(d) for d in task.devices}
    assert share > 0


def test_task_by_import_path():
    task = load_task("ftte.tasks.digits:digits_task", num_devices=2, seed=0)
    assert task.name == "digits"


@pytest.mark.parametrize("spec", ["nope", "ftte.tasks.digits:missing", "no.such.module:f"])
def test_unknown_task_is_a_clear_error(spec):
    with pytest.raises(ValueError, match="task"):
        load_task(spec, num_devices=2, seed=0)


def test_factory_must_return_a_task():
    with pytest.raises(ValueError, match="must return"):
        load_task("builtins:dict", num_devices=2, seed=0)


def test_labels_outside_the_models_classes_are_refused_with_the_fix():
    data = Dataset(np.zeros((2, 1, 8, 8), np.float32), np.array([1, 10], np.int64))
    with pytest.raises(ValueError, match=r"class ids 0\.\.9.*map raw labels"):
        check_dataset(data, DIGITS_MODEL, "site-3.csv")


def test_samples_of_another_shape_are_refused_naming_the_models_input():
    data = Dataset(np.zeros((2, 1, 16), np.float32), np.array([1, 2], np.int64))
    with pytest.raises(ValueError, match=r"takes \(1, 8, 8\)"):
        check_dataset(data, DIGITS_MODEL, "site-3.csv")


def test_a_torch_layer_with_buffers_is_refused_naming_the_layer_and_the_fix():
    layers = (Flatten(), Linear(64, 10), TorchLayer("BatchNorm1d(10)", lambda: nn.BatchNorm1d(10)))
    task = load_task("digits", num_devices=2, seed=0)
    task = replace(task, model=replace(task.model, layers=layers))
    # ftte moves the statistics of its own BatchNorm layers only: these would be dropped.
    with pytest.raises(ValueError, match=r"layer 2 \(BatchNorm1d\(10\)\).*ftte.tasks.layers"):
        make_server("ftte", task)
