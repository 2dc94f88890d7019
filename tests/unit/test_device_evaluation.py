"""Federated evaluation on the device: held-out samples, the same measure in both runtimes."""

import numpy as np
import pytest
import torch

from edge_agent.device import DeviceModel
from edge_agent.lean import LeanModel
from edge_agent.trainer import TorchModel
from ftte.tasks import MODELS, load_task
from ftte.tasks.base import Dataset, hold_out
from ftte.wire.messages import Assignment


@pytest.mark.parametrize("name", sorted(MODELS))
def test_both_runtimes_measure_the_same_model_alike(name):
    task = load_task(name, num_devices=1, seed=0, samples_per_device=40)
    torch.manual_seed(3)
    reference = TorchModel(task.model)
    values = {n: p.detach().numpy().copy() for n, p in reference.model.named_parameters()}
    lean = LeanModel(task.model)
    lean.load(values)
    a, b = reference.evaluate(task.validation), lean.evaluate(task.validation)
    assert a.samples == b.samples == len(task.validation)
    assert a.metrics["accuracy"] == pytest.approx(b.metrics["accuracy"], abs=1e-6)
    assert a.metrics["loss"] == pytest.approx(b.metrics["loss"], rel=1e-4)


def test_a_sample_stays_on_its_side_as_the_data_grows_and_shifts():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 1, 8)).astype(np.float32)
    data = Dataset(x, np.zeros(400, np.int64))
    train, held = hold_out(data, 0.2)
    assert len(train) + len(held) == 400 and 50 < len(held) < 110
    later = Dataset(x[100:], data.y[100:])  # the oldest windows fell out of the cap
    _, held_later = hold_out(later, 0.2)
    held_rows = {row.tobytes() for row in held.x}
    assert {row.tobytes() for row in held_later.x} <= held_rows
    assert len(hold_out(data, 0.0)[1]) == 0


def test_an_update_carries_the_measure_of_the_model_it_was_sent_before_training():
    task = load_task("digits", num_devices=1, seed=0, samples_per_device=40)
    device = DeviceModel(task.model, "lean")
    torch.manual_seed(0)
    values = {n: p.detach().numpy() for n, p in task.model.make_model().named_parameters()}
    assignment = Assignment("job", "d", "d.1", 0, ("11.weight", "11.bias"), values)
    update, _ = device.train(assignment, task.devices[0], seed=0, held_out=task.validation)
    fresh = LeanModel(task.model)
    fresh.load(values)
    assert update.evaluation == fresh.evaluate(task.validation)
