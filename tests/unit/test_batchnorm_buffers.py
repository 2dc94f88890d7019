"""Batch norms' running statistics travel, aggregate and are saved: never dropped."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from edge_agent.device import DeviceModel
from edge_agent.lean import LeanModel
from ftte.errors import RejectReason
from ftte.tasks import load_task
from ftte.wire import decode_assignment, encode_assignment, encode_update
from ftte.wire.messages import Assignment, Release
from orchestrator.export import release_model
from orchestrator.presets import make_server
from orchestrator.server import TrainingServer

TASK = load_task("digits_bn", num_devices=3, seed=0, samples_per_device=40)
STATS = ("1.running_mean", "1.running_var")


def fedavg() -> TrainingServer:
    s = make_server("fedavg", TASK, strategy_params={"clients_per_round": 3})
    for i in range(3):
        s.register(f"d{i}", s.full_model_peak())
    return s


def assignments(s: TrainingServer) -> list[Assignment]:
    return sorted(s.dispatch(np.random.default_rng(0), 0.0), key=lambda a: a.device_id)


def test_aggregated_statistics_are_the_sample_weighted_mean_of_what_devices_trained():
    s = fedavg()
    updates = []
    for i, sent in enumerate(assignments(s)):
        device = DeviceModel(TASK.model, runtime="lean")
        received = decode_assignment(encode_assignment(sent))
        assert set(STATS) <= received.tensors.keys()  # the first assignment carries them
        data = replace(TASK.devices[i], x=TASK.devices[i].x[: 20 + 10 * i])
        data = replace(data, y=TASK.devices[i].y[: 20 + 10 * i])
        update, _ = device.train(received, data, seed=i)
        assert set(update.buffers) == set(STATS)
        updates.append(update)
        outcome = s.ingest(sent.device_id, encode_update(update, sent.train.delta_encoding))
        assert outcome.accepted
    assert outcome.aggregation is not None
    counts = np.array([u.num_samples for u in updates], dtype=np.float64)
    for name in STATS:
        expected = counts @ np.stack([u.buffers[name] for u in updates]) / counts.sum()
        np.testing.assert_allclose(s.buffers[name], expected, rtol=1e-6)
        # Not the initial statistics: dropping them would leave mean 0 and variance 1.
        assert np.abs(s.buffers[name] - (name.endswith("var"))).max() > 0.05
    # The server evaluates with them, keeps them in its state, and sends them on.
    np.testing.assert_array_equal(s.model[1].running_mean.numpy(), s.buffers[STATS[0]])
    restored = fedavg()
    restored.load_state_dict(s.state_dict(), now=0.0)
    np.testing.assert_array_equal(restored.buffers[STATS[1]], s.buffers[STATS[1]])
    (again, *_) = assignments(s)
    np.testing.assert_array_equal(again.tensors[STATS[1]], s.buffers[STATS[1]])


def answer(a: Assignment, buffers: dict[str, np.ndarray] | None = None) -> bytes:
    delta = {n: np.zeros(TASK.model.parameter_shapes()[n], np.float32) for n in a.trainable}
    return encode_update(a.answer(delta, 10, 0.5, 1000, buffers=buffers))


def test_an_update_without_the_statistics_its_training_moved_is_refused():
    s = fedavg()
    a = assignments(s)[0]
    assert s.ingest(a.device_id, answer(a)).reason is RejectReason.WRONG_SLICE


@pytest.mark.parametrize(
    ("mean", "reason"),
    [
        (np.zeros(8, np.float32), RejectReason.BAD_SHAPE),
        (np.full(16, np.inf, np.float32), RejectReason.NON_FINITE),
    ],
)
def test_statistics_are_decoded_as_strictly_as_the_delta(mean, reason):
    s = fedavg()
    a = assignments(s)[0]
    stats = {STATS[0]: mean, STATS[1]: np.ones(16, np.float32)}
    assert s.ingest(a.device_id, answer(a, stats)).reason is reason


def test_a_negative_running_variance_is_refused():
    s = fedavg()
    a = assignments(s)[0]
    stats = {STATS[0]: np.zeros(16, np.float32), STATS[1]: np.full(16, -1.0, np.float32)}
    assert s.ingest(a.device_id, answer(a, stats)).reason is RejectReason.MALFORMED


def test_prediction_and_the_export_use_the_released_statistics():
    # TorchScript and ONNX export this torch model (tests/unit/test_release_export.py
    # checks them against it).
    rng = np.random.default_rng(0)
    tensors = {
        n: rng.normal(0, 0.3, s).astype(np.float32)
        for n, s in TASK.model.parameter_shapes().items()
    }
    tensors["1.running_mean"] = rng.normal(0, 1, 16).astype(np.float32)
    tensors["1.running_var"] = rng.uniform(0.2, 3, 16).astype(np.float32)
    release = Release("job", 3, TASK.model.name, {"accuracy": 0.5}, tensors, 0.0)
    x = TASK.validation.x[:7]
    device = LeanModel(TASK.model)  # the torch-free prediction path
    device.load(release.tensors)
    served = device.logits(x)
    at_init = LeanModel(TASK.model)
    at_init.load({n: v for n, v in tensors.items() if n not in STATS})
    assert np.abs(at_init.logits(x) - served).max() > 0.1  # the statistics matter
    with torch.no_grad():
        exported = release_model(release, TASK.model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(exported, served, rtol=1e-4, atol=1e-4)
