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
    settings = attack.PROFILES[attack.BASELINE]
    jobs = [("fedavg", seed, attack.BASELINE, 0, attack.KIND) for seed in attack.SEEDS]
    runs = [
        {"strategy": s, "seed": seed, "profile": p, "hostile": f, "tail_acc": 0.9 + seed / 100}
        for s, seed, p, f, _ in jobs
    ]
    earlier = {
        "tail": attack.TAIL,
        "horizon_s": {"fedavg": attack.HORIZON_S["fedavg"]},
        "profiles": {attack.BASELINE: repr(settings)},
        "runs": runs,
    }
    return earlier, jobs


@pytest.mark.parametrize(("rerun_acc", "reused_seeds"), [(0.9, {1, 2}), (0.91, set())])
def test_earlier_runs_are_reused_only_if_one_rerun_gives_the_same_accuracy(
    monkeypatch, rerun_acc, reused_seeds
):
    earlier, jobs = _earlier_and_jobs()
    horizon = attack.HORIZON_S["fedavg"]
    run = {"curve": [{"t": 0.0, "acc": rerun_acc}], "acc_at_budget": rerun_acc, "rejected": {}}
    monkeypatch.setattr(attack, "run_all", lambda fn, jobs, workers: [run] * len(jobs))
    reused = attack._reused(earlier, jobs, workers=1)
    assert reused[jobs[0]]["tail_acc"] == pytest.approx(rerun_acc)  # the check, run now
    assert {job[1] for job, r in reused.items() if r.get("reused")} == reused_seeds
    assert tail_accuracy(run, horizon) == pytest.approx(rerun_acc)
