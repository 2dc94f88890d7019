"""The high-rate task: 3-axis windows, and a model whose whole training a Pi Zero cannot hold."""

import numpy as np
import pytest

from ftte.memory import MemoryModel
from ftte.sim.fleet import (
    DEVICE_CLASSES_MIB,
    MIB,
    FleetSpec,
    class_training_budget,
    make_fleet,
)
from ftte.tasks import MODELS, load_task
from ftte.tasks.highrate import AXES, HIGHRATE_MODEL, WINDOW
from ftte.tasks.layers import LEAN_LAYERS
from ftte.training import TrainSettings
from orchestrator.planner import BudgetTooSmall, SlicePlanner

PI_ZERO = DEVICE_CLASSES_MIB[0] * MIB


@pytest.fixture(scope="module")
def planner() -> SlicePlanner:
    settings = TrainSettings()
    memory = MemoryModel.profile(HIGHRATE_MODEL.make_model(), HIGHRATE_MODEL.input_shape)
    return SlicePlanner(memory, settings.batch_size, settings.optimizer_slots)


def test_windows_are_three_axes_of_4096_samples_with_class_labels():
    task = load_task("highrate", num_devices=2, seed=0, samples_per_device=5)
    assert MODELS["highrate"] is task.model
    for data in (*task.devices, task.validation):
        assert data.x.shape[1:] == (AXES, WINDOW) and data.x.dtype == np.float32
        assert data.y.min() >= 0 and data.y.max() < task.model.num_classes
    assert sorted(set(task.validation.y.tolist())) == list(range(task.model.num_classes))


def test_the_model_uses_only_layers_the_lean_runtime_trains():
    assert all(isinstance(layer, LEAN_LAYERS) for layer in HIGHRATE_MODEL.layers)


def test_whole_model_training_exceeds_the_pi_zero_budget_while_a_planned_slice_fits(planner):
    budget = class_training_budget(PI_ZERO, FleetSpec().runtime_baseline_bytes)
    assert planner.full().predicted_peak_bytes > budget
    with pytest.raises(BudgetTooSmall, match="whole model"):
        planner.full_within(budget)  # what fedavg-excluded asks of a Pi Zero
    scores = {name: 1.0 for name in planner.memory.order}
    plan = planner.plan(budget, scores)
    assert plan.predicted_peak_bytes <= budget


def test_device_class_fleet_has_each_class_in_equal_shares():
    spec = FleetSpec(devices=8, budgets="device-classes")
    budgets = sorted(p.budget_bytes for p in make_fleet(spec, full_training_bytes=1, seed=0))
    expected = sorted(
        class_training_budget(ram * MIB, spec.runtime_baseline_bytes)
        for ram in DEVICE_CLASSES_MIB
        for _ in range(2)
    )
    assert budgets == expected


def test_a_baseline_the_smallest_class_cannot_hold_is_refused():
    with pytest.raises(ValueError, match="runtime_baseline_bytes"):
        FleetSpec(budgets="device-classes", runtime_baseline_bytes=512 * MIB)
