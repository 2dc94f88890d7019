"""The lean runtime: the torch trainer's delta without torch, for the layers of the spec."""

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from broker.fleet import load_fleet
from broker.generate import init_broker
from edge_agent.lean import LeanModel, UnsupportedModel
from edge_agent.runtime import make_trainer
from edge_agent.trainer import TorchModel
from ftte.memory import MemoryModel
from ftte.tasks import MODELS, load_task
from ftte.tasks.base import Dataset, ModelSpec
from ftte.tasks.layers import Conv1d, Flatten, Linear, MaxPool1d, ReLU, TorchLayer
from ftte.tasks.objectives import RECONSTRUCTION, REGRESSION
from ftte.training import Optimizer
from ftte.wire.messages import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
# float32 in both runtimes, summed in different orders: the worst measured over the cases
# below is 6.0e-8 absolute, 5.8e-6 of the tensor's largest change (docs/architecture.md).
RTOL, ATOL = 1e-4, 1e-5
SAMPLES = 40

# (model, slice, optimizer, clip_norm, micro_batch): slices from layer 0, mid-model and the
# head; SGD momentum (a number) or Adam, an active clip and gradient accumulation each on
# and off.
CASES = [
    ("digits", "all", 0.9, 1.0, 8),
    ("digits", ("0.weight", "0.bias"), 0.0, 5.0, 0),
    ("digits", ("5.weight", "5.bias", "9.weight"), 0.5, 0.5, 6),
    ("digits", ("11.bias",), 0.9, 0.0, 0),
    ("vibration", "all", 0.5, 2.0, 0),
    ("vibration", ("0.bias", "6.weight"), 0.9, 0.0, 7),
    ("vibration", ("3.weight", "3.bias", "10.weight", "10.bias"), 0.0, 0.5, 8),
    # The batch norm (layer 1) in training mode: under the whole model with micro-batches,
    # alone, and behind a slice from layer 0; in eval mode in the frozen prefix.
    ("digits_bn", "all", 0.9, 1.0, 8),
    ("digits_bn", ("1.weight", "1.bias"), 0.5, 0.0, 0),
    ("digits_bn", ("0.weight", "12.bias"), 0.0, 5.0, 6),
    ("digits_bn", ("6.weight", "12.bias"), 0.9, 0.0, 0),
    ("digits", "all", "adam", 1.0, 8),
    ("vibration", ("0.bias", "6.weight"), "adam", 0.0, 0),
    ("digits_bn", ("1.weight", "1.bias", "12.bias"), "adam", 5.0, 6),
]


def train_config(optimizer: float | str, **settings) -> TrainConfig:
    """SGD with ``optimizer`` as its momentum, or Adam."""
    if optimizer == "adam":
        return TrainConfig(optimizer=Optimizer.ADAM, **settings)
    return TrainConfig(momentum=optimizer, **settings)


@pytest.fixture(scope="module")
def tasks():
    return {
        name: load_task(name, num_devices=1, seed=0, samples_per_device=SAMPLES) for name in MODELS
    }


def _pair(spec: ModelSpec) -> tuple[TorchModel, LeanModel]:
    torch.manual_seed(1)
    reference = TorchModel(spec)
    lean = LeanModel(spec)
    values = {n: p.detach().numpy() for n, p in reference.model.named_parameters()}
    # Running statistics away from their initial 0 and 1, so eval mode is exercised.
    rng = np.random.default_rng(1)
    for name, shape in spec.buffer_shapes().items():
        values[name] = rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
    reference.load(values)
    lean.load(values)
    return reference, lean


@pytest.mark.parametrize(("model", "trainable", "optimizer", "clip", "micro"), CASES)
def test_lean_delta_equals_the_torch_delta(tasks, model, trainable, optimizer, clip, micro):
    task = tasks[model]
    reference, lean = _pair(task.model)
    names = tuple(task.model.parameter_shapes()) if trainable == "all" else trainable
    lr = 0.005 if optimizer == "adam" else 0.05  # Adam's steps are lr-sized whatever the scale
    config = train_config(
        optimizer, epochs=2, batch_size=16, lr=lr, clip_norm=clip, micro_batch=micro
    )
    expected = reference.train(names, task.devices[0], config, seed=7)
    got = lean.train(names, task.devices[0], config, seed=7)
    assert set(got.delta) == set(names)
    for name in names:
        assert np.abs(expected.delta[name]).max() > 0, name
        np.testing.assert_allclose(got.delta[name], expected.delta[name], rtol=RTOL, atol=ATOL)
    assert got.loss == pytest.approx(expected.loss, rel=RTOL)
    assert got.num_samples == expected.num_samples == SAMPLES
    moved = task.model.updated_buffers(names)
    assert set(got.buffers) == set(expected.buffers) == set(moved)
    for name in moved:
        np.testing.assert_allclose(got.buffers[name], expected.buffers[name], rtol=RTOL, atol=ATOL)


# A forecaster (3 values ahead of a 2-channel window) and an autoencoder of the window.
FORECASTER = ModelSpec(
    "forecaster",
    (
        Conv1d(2, 4, 3, padding=1),
        ReLU(),
        MaxPool1d(2),
        Flatten(),
        Linear(32, 8),
        ReLU(),
        Linear(8, 3),
    ),
    (2, 16),
    objective=REGRESSION,
)
AUTOENCODER = ModelSpec(
    "autoencoder",
    (Flatten(), Linear(32, 6), ReLU(), Linear(6, 32)),
    (2, 16),
    objective=RECONSTRUCTION,
)


@pytest.mark.parametrize(
    ("spec", "trainable", "micro", "optimizer"),
    [
        (FORECASTER, "all", 8, 0.9),
        (FORECASTER, ("4.weight", "6.bias"), 0, "adam"),
        (AUTOENCODER, "all", 0, "adam"),
        (AUTOENCODER, ("3.weight", "3.bias"), 6, 0.9),
    ],
)
def test_lean_delta_equals_the_torch_delta_under_the_squared_error_objectives(
    spec, trainable, micro, optimizer
):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(SAMPLES, 2, 16)).astype(np.float32)
    y = rng.normal(size=(SAMPLES, 3)).astype(np.float32)
    data = Dataset(x, y if spec.objective is REGRESSION else np.full(SAMPLES, -1, np.int64))
    reference, lean = _pair(spec)
    names = tuple(spec.parameter_shapes()) if trainable == "all" else trainable
    config = train_config(
        optimizer, epochs=2, batch_size=16, lr=0.05, clip_norm=1.0, micro_batch=micro
    )
    expected = reference.train(names, data, config, seed=5)
    got = lean.train(names, data, config, seed=5)
    for name in names:
        assert np.abs(expected.delta[name]).max() > 0, name
        np.testing.assert_allclose(got.delta[name], expected.delta[name], rtol=RTOL, atol=ATOL)
    assert got.loss == pytest.approx(expected.loss, rel=RTOL)
    assert lean.evaluate(data).metrics == pytest.approx(reference.evaluate(data).metrics, rel=RTOL)


def test_a_steps_cap_stops_both_runtimes_after_the_same_batches():
    rng = np.random.default_rng(4)
    data = Dataset(rng.normal(size=(SAMPLES, 2, 16)).astype(np.float32), np.full(SAMPLES, -1))
    reference, lean = _pair(AUTOENCODER)
    names = tuple(AUTOENCODER.parameter_shapes())
    # 3 batches of 16 per epoch: 4 steps end one batch into the second epoch.
    capped = train_config("adam", epochs=3, batch_size=16, lr=0.005, steps=4)
    expected = reference.train(names, data, capped, seed=5)
    got = lean.train(names, data, capped, seed=5)
    whole = lean.train(names, data, replace(capped, steps=0), seed=5)
    assert got.samples_processed == expected.samples_processed == SAMPLES + 16
    assert whole.samples_processed == 3 * SAMPLES
    for name in names:
        np.testing.assert_allclose(got.delta[name], expected.delta[name], rtol=RTOL, atol=ATOL)
        assert not np.allclose(got.delta[name], whole.delta[name])
    assert got.loss == pytest.approx(expected.loss, rel=RTOL)


def test_lean_training_leaves_the_assigned_values(tasks):
    task = tasks["digits"]
    _, lean = _pair(task.model)
    before = {n: v.copy() for n, v in lean.params.items()}
    lean.train(("2.weight", "11.bias"), task.devices[0], TrainConfig(momentum=0.9), seed=0)
    for name, value in lean.params.items():
        np.testing.assert_array_equal(value, before[name])


def test_lean_peak_counts_the_weights_and_the_training_arrays(tasks):
    task = tasks["vibration"]
    _, lean = _pair(task.model)
    weights = sum(v.nbytes for v in lean.params.values())
    config = TrainConfig(epochs=1, batch_size=32)
    head = lean.train(("12.bias",), task.devices[0], config, seed=0).peak_mem_bytes
    whole = lean.train(tuple(lean.params), task.devices[0], config, seed=0).peak_mem_bytes
    assert weights < head < whole


def test_a_layer_the_lean_runtime_cannot_train_is_named_with_the_fix():
    spec = ModelSpec(
        "custom",
        (
            Flatten(),
            TorchLayer("LayerNorm(4)", lambda: torch.nn.LayerNorm(4)),
            ReLU(),
            Linear(4, 2),
        ),
        (4,),
        2,
    )
    with pytest.raises(UnsupportedModel, match=r'layer 1 \(LayerNorm\(4\)\).*runtime = "torch"'):
        make_trainer(spec, "lean")
    assert make_trainer(spec, "torch").parameter_shapes()["3.weight"] == (2, 4)


def test_an_unknown_runtime_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="lean, torch"):
        make_trainer(MODELS["digits"], "tflite")


def test_the_lean_agent_starts_without_importing_torch(tmp_path):
    # The config a deploy writes: `ftte broker init` from a fleet whose device runs lean.
    (tmp_path / "fleet.toml").write_text(
        "\n".join(
            [
                "[fleet]",
                'name = "f"',
                'broker_host = "127.0.0.1"',
                'task = "vibration"',
                f'agent_state_dir = "{tmp_path / "state"}"',
                "[[devices]]",
                'id = "dev-1"',
                "memory_budget_bytes = 100000000",
                'runtime = "lean"',
                "",
            ]
        )
    )
    init_broker(load_fleet(tmp_path / "fleet.toml"), tmp_path / "files")
    config = tmp_path / "files" / "devices" / "dev-1.toml"
    # Everything the agent does before it connects: imports, config, data, model.
    code = (
        "import sys; from pathlib import Path; "
        "from edge_agent.agent import EdgeAgent; from edge_agent.config import load_agent_config; "
        f"agent = EdgeAgent(load_agent_config(Path({str(config)!r}))); "
        "print(type(agent.model.trainer).__name__, 'torch' in sys.modules)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert run.stdout.split() == ["LeanModel", "False"], run.stderr


@pytest.mark.parametrize("model", ["digits", "digits_bn", "vibration"])
def test_lean_peak_stays_within_the_memory_model_the_planner_uses(tasks, model):
    task = tasks[model]
    _, lean = _pair(task.model)
    memory = MemoryModel.profile(task.model.make_model(), task.model.input_shape)
    names = list(task.model.parameter_shapes())
    for trainable, micro in [(names, 0), (names[-4:], 8), (names[2:4], 4)]:
        config = TrainConfig(epochs=1, batch_size=32, micro_batch=micro)
        measured = lean.train(trainable, task.devices[0], config, seed=0).peak_mem_bytes
        assert measured <= memory.peak_bytes(trainable, 32, config.optimizer_slots, micro), (
            trainable,
            micro,
        )


# A user's autoencoder of 64-value windows (examples/pump's shape).
MLP_AUTOENCODER = ModelSpec(
    "mlp-autoencoder",
    (
        Flatten(),
        Linear(64, 32),
        ReLU(),
        Linear(32, 8),
        ReLU(),
        Linear(8, 32),
        ReLU(),
        Linear(32, 64),
    ),
    (1, 64),
    objective=RECONSTRUCTION,
)


@pytest.mark.parametrize("spec", [FORECASTER, MLP_AUTOENCODER])
def test_lean_peak_of_linear_stacks_stays_within_the_memory_model(spec):
    # Counted before as buffers of their own: the flattened input (a view), each ReLU's mask
    # beside the output the next layer keeps, and each weight gradient before its sum: up to
    # 10 % over the model the planner sizes slices with, on the autoencoder.
    rng = np.random.default_rng(2)
    x = rng.normal(size=(SAMPLES, *spec.input_shape)).astype(np.float32)
    y = rng.normal(size=(SAMPLES, 3)).astype(np.float32)
    data = Dataset(x, y if spec.objective is REGRESSION else np.full(SAMPLES, -1, np.int64))
    _, lean = _pair(spec)
    memory = MemoryModel.profile(spec.make_model(), spec.input_shape)
    names = list(spec.parameter_shapes())
    for trainable, micro, optimizer in [
        (names, 0, "adam"),
        (names[2:], 0, 0.9),
        (names[2:], 8, 0.9),
        (names[-2:], 8, "adam"),
    ]:
        config = train_config(optimizer, epochs=1, batch_size=32, micro_batch=micro)
        measured = lean.train(trainable, data, config, seed=0).peak_mem_bytes
        predicted = memory.peak_bytes(trainable, 32, config.optimizer_slots, micro)
        assert measured <= predicted, (trainable, micro, measured, predicted)
