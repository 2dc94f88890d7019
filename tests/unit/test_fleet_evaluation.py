"""Federated evaluation: devices' reports on the version they were sent, per version."""

import numpy as np
import pytest

from ftte.errors import Rejected
from ftte.wire import decode_update, encode_update
from ftte.wire.messages import Evaluation, Update
from orchestrator.evaluation import SPAN, FleetEvaluation


def test_the_fleets_measure_is_sample_weighted_over_each_devices_newest_report():
    fleet = FleetEvaluation(max_samples=1000)
    fleet.add(3, "a", Evaluation(10, {"accuracy": 0.5, "loss": 1.0}))
    fleet.add(4, "b", Evaluation(30, {"accuracy": 0.9, "loss": 0.2}))
    fleet.add(5, "a", Evaluation(10, {"accuracy": 0.7, "loss": 0.8}))  # replaces a's first
    fleet.add(2, "a", Evaluation(10, {"accuracy": 0.0, "loss": 9.0}))  # late and older: kept out
    latest = fleet.latest(min_devices=2)
    assert (latest.version, latest.devices, latest.samples) == (5, 2, 40)
    assert latest.metrics == pytest.approx({"accuracy": 0.85, "loss": 0.35})
    assert latest.by_device_of("accuracy") == {"a": (10, 0.7), "b": (30, 0.9)}
    assert fleet.latest(min_devices=3) is None


def test_a_huge_claimed_sample_count_weighs_no_more_than_the_cap():
    fleet = FleetEvaluation(max_samples=100)
    fleet.add(1, "honest", Evaluation(100, {"accuracy": 0.9}))
    fleet.add(1, "liar", Evaluation(2**53, {"accuracy": 0.0}))
    assert fleet.latest().metrics["accuracy"] == pytest.approx(0.45)


def test_reports_on_versions_long_past_are_left_out_and_the_state_survives_a_restart():
    fleet = FleetEvaluation(max_samples=100)
    fleet.add(1, "gone", Evaluation(50, {"accuracy": 0.1}))
    fleet.add(1 + SPAN + 1, "here", Evaluation(5, {"accuracy": 0.9}))
    assert fleet.latest().devices == 1 and fleet.latest().metrics["accuracy"] == 0.9
    restored = FleetEvaluation(max_samples=100)
    restored.load_state_dict(fleet.state_dict())
    assert restored.latest() == fleet.latest()


def update(evaluation):
    delta = {"0.bias": np.zeros(2, np.float32)}
    return Update("d", "u", "d.1", 0, 10, 0.5, 100, delta, evaluation)


def test_an_evaluation_travels_with_its_update_and_a_bad_one_is_refused():
    sent = update(Evaluation(20, {"accuracy": 0.75, "loss": 0.5}))
    assert decode_update(encode_update(sent)).evaluation == sent.evaluation
    assert decode_update(encode_update(update(None))).evaluation is None
    for bad in (Evaluation(0, {"accuracy": 0.5}), Evaluation(5, {"accuracy": float("nan")})):
        with pytest.raises(Rejected):
            decode_update(encode_update(update(bad)))


def test_a_metric_some_devices_leave_out_is_averaged_over_those_that_report_it():
    fleet = FleetEvaluation(max_samples=1000)
    fleet.add(1, "labelled", Evaluation(10, {"mse": 0.2, "auc": 0.9}))
    fleet.add(1, "unlabelled", Evaluation(30, {"mse": 0.6}))
    latest = fleet.latest()
    # auc is the labelled device's own, not dropped fleet-wide nor diluted by the other.
    assert latest.metrics == pytest.approx({"mse": 0.5, "auc": 0.9})
    assert latest.samples == 40


@pytest.mark.parametrize(
    "metrics",
    [
        {"x" * 200: 0.5},  # a name outside the vocabulary, long enough to bloat the job state
        {"accuracy": 0.5, "precision": 0.5},
        {"accuracy": 1e300},  # finite, but no accuracy
        {"loss": -1.0},
        {"auc": 1.5},
    ],
)
def test_a_report_with_an_unknown_metric_or_a_value_out_of_range_is_refused(metrics):
    with pytest.raises(Rejected, match="metric"):
        decode_update(encode_update(update(Evaluation(20, metrics))))
