"""The device trainer: trains exactly the slice, returns its delta, leaves the model as sent."""

import numpy as np
import pytest
import torch
from torch import nn

from edge_agent.trainer import train_slice
from ftte.memory import MemoryModel
from ftte.tasks.base import Dataset
from ftte.wire.messages import TrainConfig


def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(1, 4, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Flatten(),
        nn.Linear(4 * 16, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )


@pytest.fixture
def data() -> Dataset:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 96)
    x = (rng.normal(size=(96, 1, 32)) + y[:, None, None]).astype(np.float32)
    return Dataset(x, y.astype(np.int64))


CONFIG = TrainConfig(epochs=2, batch_size=16, lr=0.1, momentum=0.9)
SLICE = ("4.bias", "6.weight", "6.bias")


def test_delta_covers_exactly_the_slice(data):
    result = train_slice(model(), SLICE, data, CONFIG, seed=0)
    assert set(result.delta) == set(SLICE)
    assert all(np.abs(d).sum() > 0 for d in result.delta.values())


def test_model_keeps_the_values_it_was_sent(data):
    m = model()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    train_slice(m, SLICE, data, CONFIG, seed=0)
    for n, p in m.named_parameters():
        assert torch.equal(p, before[n]), n


def test_delta_applied_to_the_start_gives_the_trained_slice(data):
    m = model()
    result = train_slice(m, SLICE, data, CONFIG, seed=0)
    # Training again from the same start with the same seed gives the same delta.
    again = train_slice(m, SLICE, data, CONFIG, seed=0)
    for n in SLICE:
        np.testing.assert_array_equal(result.delta[n], again.delta[n])


def test_training_reduces_loss_on_the_local_data(data):
    one = train_slice(model(), SLICE, data, TrainConfig(epochs=1, batch_size=16, lr=0.1), seed=0)
    many = train_slice(model(), SLICE, data, TrainConfig(epochs=8, batch_size=16, lr=0.1), seed=0)
    assert many.loss < one.loss


def test_frozen_prefix_keeps_no_gradient(data):
    m = model()
    train_slice(m, ("6.bias",), data, CONFIG, seed=0)
    assert all(p.grad is None for n, p in m.named_parameters() if not n.startswith("6."))


def test_measured_peak_stays_under_the_memory_model(data):
    mem = MemoryModel.profile(model(), (1, 32))
    for trainable in [SLICE, ("0.weight",), tuple(mem.order)]:
        result = train_slice(model(), trainable, data, CONFIG, seed=0)
        predicted = mem.peak_bytes(trainable, CONFIG.batch_size, CONFIG.optimizer_slots)
        assert mem.weight_bytes < result.peak_mem_bytes <= predicted


def test_micro_batches_give_the_same_update_with_less_memory(data):
    everything = tuple(n for n, _ in model().named_parameters())
    whole = train_slice(model(), everything, data, CONFIG, seed=0)
    chunked_config = TrainConfig(epochs=2, batch_size=16, lr=0.1, momentum=0.9, micro_batch=4)
    chunked = train_slice(model(), everything, data, chunked_config, seed=0)
    for n in everything:
        np.testing.assert_allclose(chunked.delta[n], whole.delta[n], rtol=1e-4, atol=1e-6)
    assert chunked.loss == pytest.approx(whole.loss, rel=1e-5)
    assert chunked.peak_mem_bytes < whole.peak_mem_bytes
    mem = MemoryModel.profile(model(), (1, 32))
    assert chunked.peak_mem_bytes <= mem.peak_bytes(
        everything, 16, chunked_config.optimizer_slots, micro_batch=4
    )


def test_clipping_bounds_every_step(data):
    plain = TrainConfig(epochs=1, batch_size=16, lr=0.1, clip_norm=0.0)
    clipped = TrainConfig(epochs=1, batch_size=16, lr=0.1, clip_norm=1e-3)
    steps = len(data) // 16

    def norm(result):
        return float(np.sqrt(sum(np.sum(d**2) for d in result.delta.values())))

    bound = steps * 0.1 * 1e-3
    assert norm(train_slice(model(), SLICE, data, clipped, seed=0)) <= bound * 1.0001
    assert norm(train_slice(model(), SLICE, data, plain, seed=0)) > 10 * bound


def test_unknown_tensor_in_slice_is_refused(data):
    with pytest.raises(ValueError, match="unknown"):
        train_slice(model(), ("9.weight",), data, CONFIG, seed=0)
