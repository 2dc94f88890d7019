"""Fleet size: 10,000 devices register, dispatch and step without per-event registry walks."""

from dataclasses import replace

import numpy as np
import pytest

from ftte.sim.devices import FleetModels
from ftte.sim.fleet import FleetSpec, make_fleet
from ftte.tasks import load_task
from ftte.training import TrainSettings
from ftte.wire import encode_update
from ftte.wire.messages import Assignment
from orchestrator.planner import SlicePlanner
from orchestrator.presets import make_server
from orchestrator.server import ServerSettings, TrainingServer

TASK = load_task("digits", num_devices=2, seed=0, samples_per_device=20)
DEVICES = 10_000


class WalkCountingRegistry(dict):
    """The engine's device registry, counting walks over every record."""

    walks = 0

    def values(self):  # type: ignore[override]
        self.walks += 1
        return super().values()

    def items(self):  # type: ignore[override]
        self.walks += 1
        return super().items()

    def __iter__(self):
        self.walks += 1
        return super().__iter__()


def counting_plans(planner: SlicePlanner) -> list[int]:
    """Record each budget the planner is asked to plan."""
    asked: list[int] = []
    plan = planner.plan

    def counted(budget: int, scores):  # type: ignore[no-untyped-def]
        asked.append(budget)
        return plan(budget, scores)

    planner.plan = counted  # type: ignore[method-assign]
    return asked


def answer(a: Assignment) -> bytes:
    delta = {n: np.full(a.tensors[n].shape, 0.01, np.float32) for n in a.trainable}
    return encode_update(a.answer(delta, 20, 0.5, 1000))


@pytest.mark.parametrize("preset", ["ftte", "ftte-weakest"])
def test_a_10000_device_fleet_steps_without_walking_the_registry_or_planning_per_device(preset):
    s: TrainingServer = make_server(
        preset,
        TASK,
        settings=ServerSettings(rescore_every=1),  # plans are redone after every aggregation
        strategy_params={"buffer_size": 3, "buffer_fraction": 0.0},
    )
    # Budgets 90-100 % of the full model's peak: a handful of 1 % planning classes.
    spec = FleetSpec(devices=DEVICES, weakest_fraction=0.9)
    for p in make_fleet(spec, s.full_model_peak(), seed=0):
        s.register(p.device_id, p.budget_bytes)
    asked = counting_plans(s.planner)
    rng = np.random.default_rng(0)
    first = {a.device_id: a for a in s.dispatch(rng, 0.0)}
    assert len(first) == DEVICES and s.in_flight() == DEVICES
    assert len(asked) <= 12  # one plan per 1 % budget class (at most 12), not one per device
    # Every assignment of one dispatch carries the same copy of each tensor.
    assert len({id(a.tensors["0.weight"]) for a in first.values()}) == 1

    registry = WalkCountingRegistry(s.devices)
    s.devices = registry
    asked.clear()
    for step, device_id in enumerate(list(first)[:9]):
        now = 1.0 + step
        assert s.ingest(device_id, answer(first[device_id])).accepted
        s.expire_overdue(now)
        for a in s.dispatch(rng, now):
            first[a.device_id] = a
    assert s.version == 3  # three aggregations, each followed by a rescore
    assert registry.walks == 0
    assert 0 < len(asked) <= 3 * 12


def test_simulated_devices_share_the_values_sent_at_one_version_and_train_as_if_alone():
    s = make_server("ftte", TASK, train=TrainSettings(epochs=1))
    s.register("a", s.full_model_peak())
    s.register("b", s.full_model_peak())
    assignments = s.dispatch(np.random.default_rng(0), 0.0)
    # Each device receives its own decoded copy, as over the wire.
    received = [
        replace(a, tensors={n: v.copy() for n, v in a.tensors.items()}) for a in assignments
    ]
    shared, alone = (
        FleetModels(TASK.model),
        {a.device_id: FleetModels(TASK.model) for a in received},
    )
    for a, data in zip(received, TASK.devices, strict=True):
        update, _ = shared.train(a.device_id, a, data, seed=1, update_id="u")
        reference, _ = alone[a.device_id].train(a.device_id, a, data, seed=1, update_id="u")
        for name in a.trainable:
            np.testing.assert_array_equal(update.delta[name], reference.delta[name])
    held_a, held_b = (shared._held[a.device_id] for a in received)
    assert all(held_a[n] is held_b[n] for n in held_a)
    assert shared.version("a") == 0 and shared.version("never-seen") == -1
