"""Objectives: each kind's targets, checks, metrics and direction, and what uses them."""

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from ftte.tasks.base import Dataset, ModelSpec, Task, check_dataset
from ftte.tasks.layers import Flatten, Linear, ReLU
from ftte.tasks.objectives import (
    CLASSIFICATION,
    RECONSTRUCTION,
    REGRESSION,
    anomaly_threshold,
    macro_f1,
    roc_auc,
)
from orchestrator.config import JobSection, TargetOn

LAYERS = (Flatten(), Linear(8, 4), ReLU(), Linear(4, 8))
AUTOENCODER = ModelSpec("ae", LAYERS, (1, 8), objective=RECONSTRUCTION)
FORECASTER = ModelSpec("fc", (*LAYERS[:3], Linear(4, 2)), (1, 8), objective=REGRESSION)
CLASSIFIER = ModelSpec("cl", (*LAYERS[:3], Linear(4, 3)), (1, 8), 3)
X = np.random.default_rng(0).normal(size=(6, 1, 8)).astype(np.float32)


def test_macro_f1_and_auc_agree_with_scikit_learn():
    rng = np.random.default_rng(1)
    y, predicted = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    assert macro_f1(y, predicted) == pytest.approx(f1_score(y, predicted, average="macro"))
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(size=300) + labels, 1)  # rounded: ties count a half
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert roc_auc(np.zeros(5, np.int64), scores[:5]) is None  # one kind only: no AUC


@pytest.mark.parametrize(
    ("spec", "y", "fix"),
    [
        (CLASSIFIER, np.array([1, 2, 3, 1, 2, 3]), "map raw labels"),
        (CLASSIFIER, np.zeros(6, np.float32), "int64 class ids"),
        (FORECASTER, np.zeros((6, 2), np.int64), "float32 target values"),
        (FORECASTER, np.zeros((6, 3), np.float32), "last Linear layer output 3"),
        (FORECASTER, np.full((6, 2), np.nan, np.float32), "drop those samples"),
        (AUTOENCODER, np.full(6, 2), "np.full"),
    ],
)
def test_a_dataset_the_objective_cannot_learn_from_is_refused_with_the_fix(spec, y, fix):
    with pytest.raises(ValueError, match=fix):
        check_dataset(Dataset(X, y), spec, "device 0")


def test_each_objective_takes_its_own_kind_of_targets():
    check_dataset(Dataset(X, np.array([0, 1, 2, 0, 1, 2])), CLASSIFIER, "ok")
    check_dataset(Dataset(X, np.zeros((6, 2), np.float32)), FORECASTER, "ok")
    check_dataset(Dataset(X, np.full(6, -1)), AUTOENCODER, "unlabelled is fine")
    np.testing.assert_array_equal(RECONSTRUCTION.targets(Dataset(X, np.full(6, -1))), X[:, 0])


def test_an_autoencoder_that_cannot_output_its_input_is_refused():
    narrow = ModelSpec("ae", (*LAYERS[:3], Linear(4, 6)), (1, 8), objective=RECONSTRUCTION)
    with pytest.raises(ValueError, match="output 8"):
        check_dataset(Dataset(X, np.full(6, -1)), narrow, "device 0")


def test_a_classifier_without_classes_is_refused_naming_the_other_objectives():
    with pytest.raises(ValueError, match="objective=REGRESSION"):
        ModelSpec("fc", LAYERS, (1, 8))


def test_reconstruction_scores_windows_by_their_error_and_flags_against_the_threshold():
    data = Dataset(X, np.array([0, 0, 0, 0, 1, 1]))
    outputs = X[:, 0].copy()
    outputs[4:] += 3.0  # the two anomalies reconstruct badly
    metrics = RECONSTRUCTION.metrics(outputs, data)
    assert metrics["auc"] == 1.0 and metrics["mse"] == pytest.approx(9.0 * 2 / 6)
    threshold = anomaly_threshold(np.array([0.0, 0.1, 0.2, 1.0]))
    assert 0.2 < threshold < 1.0
    answers = RECONSTRUCTION.predictions(outputs, X, threshold)
    assert [a["anomaly"] for a in answers] == [False] * 4 + [True] * 2
    assert "auc" not in RECONSTRUCTION.metrics(outputs, Dataset(X, np.full(6, -1)))


def test_the_primary_metrics_direction_decides_reached_and_better():
    assert CLASSIFICATION.reached(0.91, 0.9) and not CLASSIFICATION.reached(0.89, 0.9)
    assert REGRESSION.reached(0.02, 0.05) and not REGRESSION.reached(0.06, 0.05)
    assert REGRESSION.better(0.1, 0.2) and CLASSIFICATION.better(0.2, 0.1)
    assert REGRESSION.metrics(np.ones((2, 2)), Dataset(X[:2], np.zeros((2, 2), np.float32))) == {
        "loss": 1.0,
        "mse": 1.0,
        "mae": 1.0,
    }


def job(**fields):
    return JobSection("j", "f", Path("run"), task="t", **fields)


def task(spec, validation=True):
    data = Dataset(X, np.full(6, -1)) if spec is AUTOENCODER else None
    return Task(spec, [], data if validation else None, target=0.05)


def test_a_job_stops_on_the_objectives_primary_metric_and_refuses_ambiguous_targets():
    assert job().stop_target(task(AUTOENCODER)) == 0.05
    assert job(target=0.01).stop_target(task(AUTOENCODER)) == 0.01
    with pytest.raises(ValueError, match=r"set job\.target to the mse"):
        job(target_accuracy=0.9).stop_target(task(AUTOENCODER))
    with pytest.raises(ValueError, match=r"remove job\.target_accuracy"):
        job(target=0.9, target_accuracy=0.9)
    with pytest.raises(ValueError, match="target_on = 'fleet'"):
        job().stop_target(task(AUTOENCODER, validation=False))
    assert job(target_on=TargetOn.FLEET).stop_target(task(AUTOENCODER, validation=False)) == 0.05
