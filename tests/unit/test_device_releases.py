"""What a device keeps of the releases it is sent, and going back to the one before."""

import numpy as np
import pytest

from edge_agent.predict import Predictor
from edge_agent.releases import CURRENT, PREVIOUS, DeviceReleases
from edge_agent.runtime import make_trainer
from ftte.errors import Rejected
from ftte.tasks import MODELS
from ftte.tasks.base import Dataset, ModelSpec
from ftte.tasks.layers import Flatten, Linear, ReLU
from ftte.tasks.objectives import RECONSTRUCTION, REGRESSION
from ftte.wire.codec import encode_release
from ftte.wire.messages import Release

SPEC = MODELS["digits"]


def release(version: int, model: str = "digits") -> bytes:
    rng = np.random.default_rng(version)
    tensors = {n: rng.normal(size=s).astype(np.float32) for n, s in SPEC.parameter_shapes().items()}
    return encode_release(Release("job", version, model, {"accuracy": 0.5}, tensors, 0.0))


def test_a_new_release_is_served_and_the_one_before_kept_for_a_rollback(tmp_path):
    releases = DeviceReleases(tmp_path, SPEC)
    assert releases.receive(release(1)).version == 1
    assert releases.receive(release(1)) is None  # the same one again: nothing changes
    assert releases.receive(release(2)).version == 2
    assert releases.current()[0].version == 2 and releases.previous()[0].version == 1
    assert releases.rollback().version == 1
    assert releases.previous()[0].version == 2
    assert (tmp_path / CURRENT).read_bytes() == release(1)


def test_a_release_of_another_model_or_shape_is_refused_and_nothing_changes(tmp_path):
    releases = DeviceReleases(tmp_path, SPEC)
    releases.receive(release(1))
    with pytest.raises(Rejected, match="model 'vibration'"):
        releases.receive(release(2, model="vibration"))
    other = MODELS["vibration"]
    tensors = {n: np.zeros(s, np.float32) for n, s in other.parameter_shapes().items()}
    with pytest.raises(Rejected):
        releases.receive(encode_release(Release("job", 3, "digits", {}, tensors, 0.0)))
    assert releases.current()[0].version == 1 and not (tmp_path / PREVIOUS).exists()


def test_without_an_earlier_release_a_rollback_says_so(tmp_path):
    releases = DeviceReleases(tmp_path, SPEC)
    releases.receive(release(1))
    with pytest.raises(FileNotFoundError, match="no earlier release"):
        releases.rollback()


def test_the_predictor_scores_with_the_release_in_either_runtime(tmp_path):
    releases = DeviceReleases(tmp_path, SPEC)
    releases.receive(release(4))
    served, sha = releases.current()
    x = np.random.default_rng(0).normal(size=(7, 1, 8, 8)).astype(np.float32)
    lean = Predictor(make_trainer(SPEC, "lean"), served, sha, SPEC.objective)
    reference = Predictor(make_trainer(SPEC, "torch"), served, sha, SPEC.objective)
    np.testing.assert_allclose(lean.outputs(x), reference.outputs(x), rtol=1e-4, atol=1e-5)
    scores = np.array([answer["scores"] for answer in lean.predict(x)])
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-6)


AUTOENCODER = ModelSpec(
    "ae", (Flatten(), Linear(8, 3), ReLU(), Linear(3, 8)), (1, 8), objective=RECONSTRUCTION
)
FORECASTER = ModelSpec("fc", (Flatten(), Linear(8, 2)), (1, 8), objective=REGRESSION)


def served(spec: ModelSpec) -> Release:
    rng = np.random.default_rng(0)
    tensors = {n: rng.normal(size=s).astype(np.float32) for n, s in spec.parameter_shapes().items()}
    return Release("job", 1, spec.name, {"mse": 1.0}, tensors, 0.0)


def test_an_anomaly_detector_flags_windows_above_the_devices_own_threshold():
    rng = np.random.default_rng(1)
    held = Dataset(rng.normal(size=(200, 1, 8)).astype(np.float32), np.full(200, -1))
    predictor = Predictor(
        make_trainer(AUTOENCODER, "lean"), served(AUTOENCODER), "", RECONSTRUCTION, held
    )
    held_scores = np.array([a["score"] for a in predictor.predict(held.x)])
    assert predictor.threshold == pytest.approx(np.quantile(held_scores, 0.99))
    answers = predictor.predict(np.concatenate([held.x[:5], held.x[:5] + 50]))
    assert [a["anomaly"] for a in answers[5:]] == [True] * 5  # far off the normal range
    assert all(a["anomaly"] == (a["score"] > predictor.threshold) for a in answers)


def test_a_forecaster_answers_with_its_output_values():
    x = np.random.default_rng(2).normal(size=(3, 1, 8)).astype(np.float32)
    predictor = Predictor(make_trainer(FORECASTER, "lean"), served(FORECASTER), "", REGRESSION)
    answers = predictor.predict(x)
    np.testing.assert_allclose([a["output"] for a in answers], predictor.outputs(x), rtol=1e-6)
