"""The attack benchmark's measure: time-weighted mean accuracy over the curve's tail."""

import pytest

from ftte.bench.attack import TAIL, tail_accuracy


def test_the_tail_mean_weights_each_accuracy_by_how_long_it_was_the_models():
    horizon = 90.0
    start = horizon * (1 - TAIL)  # 60 s
    curve = [{"t": 10.0, "acc": 0.1}, {"t": 50.0, "acc": 0.5}, {"t": 75.0, "acc": 0.9}]
    # 0.5 from 60 s to 75 s, then 0.9 to 90 s; the point at 10 s is before the tail.
    expected = (0.5 * 15 + 0.9 * 15) / (horizon - start)
    assert tail_accuracy({"curve": curve}, horizon) == pytest.approx(expected)


def test_points_past_the_horizon_do_not_count_and_no_model_counts_zero():
    curve = [{"t": 80.0, "acc": 0.6}, {"t": 95.0, "acc": 1.0}]
    assert tail_accuracy({"curve": curve}, 90.0) == pytest.approx((0.0 * 20 + 0.6 * 10) / 30)
