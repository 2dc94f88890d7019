"""The attack benchmark's measure: time-weighted mean accuracy over the curve's tail."""

import pytest

from ftte.bench import attack
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


def _earlier_and_jobs():
    honest = [("fedavg", seed, attack.BASELINE, 0, attack.KIND) for seed in attack.SEEDS]
    attacked = [("fedavg", seed, attack.RECOMMENDED, 1, attack.KIND) for seed in attack.SEEDS]
    runs = [
        {"strategy": s, "seed": seed, "profile": p, "hostile": f, "tail_acc": 0.9 - f / 10}
        for s, seed, p, f, _ in honest + attacked
    ]
    earlier = {
        "tail": attack.TAIL,
        "horizon_s": {"fedavg": attack.HORIZON_S["fedavg"]},
        "profiles": {name: repr(settings) for name, settings in attack.PROFILES.items()},
        "runs": runs,
    }
    return earlier, honest + attacked


@pytest.mark.parametrize(("rerun_acc", "reproduced"), [(0.9, True), (0.91, False)])
def test_earlier_runs_are_reused_only_if_the_honest_ones_rerun_give_the_same_accuracy(
    monkeypatch, rerun_acc, reproduced
):
    earlier, jobs = _earlier_and_jobs()
    seeds = len(attack.SEEDS)
    horizon = attack.HORIZON_S["fedavg"]
    run = {"curve": [{"t": 0.0, "acc": rerun_acc}], "acc_at_budget": rerun_acc, "rejected": {}}
    monkeypatch.setattr(attack, "run_all", lambda fn, jobs, workers: [run] * len(jobs))
    found = attack._reused(earlier, jobs, workers=1)
    for honest in jobs[:seeds]:  # the checks, run now
        assert found[honest]["tail_acc"] == pytest.approx(rerun_acc)
        assert "reused" not in found[honest]
    # The attacked runs, one per seed, are taken only if every check reproduced.
    assert sum(1 for r in found.values() if r.get("reused")) == (seeds if reproduced else 0)
    assert tail_accuracy(run, horizon) == pytest.approx(rerun_acc)


def test_the_tail_drift_is_the_second_half_of_the_tail_against_the_first():
    # Horizon 120 s: the tail is 80-120 s, its halves 80-100 s and 100-120 s.
    curve = [{"t": 0.0, "acc": 0.5}, {"t": 90.0, "acc": 0.9}, {"t": 110.0, "acc": 0.95}]
    first = (0.5 * 10 + 0.9 * 10) / 20
    second = (0.9 * 10 + 0.95 * 10) / 20
    assert attack.tail_drift({"curve": curve}, 120.0) == pytest.approx(100 * (second - first))
    assert attack.tail_drift({"curve": curve[:1]}, 120.0) == pytest.approx(0.0)


def test_the_sampled_curve_is_the_models_accuracy_at_each_step_of_the_horizon():
    curve = [{"t": 1.5, "acc": 0.3}, {"t": 2.0, "acc": 0.6}]
    sampled = attack.sampled_curve({"curve": curve}, float(attack.CURVE_POINTS))
    assert sampled[:4] == [0.0, 0.0, 0.6, 0.6]
    assert len(sampled) == attack.CURVE_POINTS + 1
