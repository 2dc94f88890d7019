"""The paper benchmark's report: every strategy on one fleet, the JSON keys the issue names."""

import json

import pytest

from ftte.bench.paper import STRATEGIES, BenchSize, check_resumable, format_table, paper_benchmark

TINY = BenchSize(devices=6, seeds=2, time_budget_s=5.0, time_limit_s=30.0, max_updates=20)
PER_STRATEGY = (
    "time_to_target_s",
    "final_acc",
    "peak_mem_bytes_max",
    "peak_mem_bytes_weakest",
    "all_within_budget",
    "bytes_up_per_update",
    "bytes_down_per_update",
    "bytes_total",
)


@pytest.fixture(scope="module")
def resumed():
    """One seed run, then resumed to two: the second seed is the only new work (one
    benchmark of two seeds serves both tests; it is the slow part of this module)."""
    one = BenchSize(devices=6, seeds=1, time_budget_s=5.0, time_limit_s=30.0, max_updates=20)
    first = json.loads(json.dumps(paper_benchmark("digits", one)))  # as --json stores it
    for runs in first["runs"].values():
        runs[0]["marker"] = "kept"  # a rerun would not carry this
    return paper_benchmark("digits", TINY, workers=2, previous=first)


@pytest.mark.slow
def test_report_has_every_strategy_metric_and_ratio(resumed):
    results = resumed
    assert set(results["strategies"]) == set(STRATEGIES)
    for name in STRATEGIES:
        s = results["strategies"][name]
        assert all(key in s for key in PER_STRATEGY), name
        assert len(results["runs"][name]) == TINY.seeds
        assert s["bytes_up_per_update"] > 0 and s["bytes_total"] > 0
    ratios = results["ratios_vs_fedavg"]
    fedavg = results["strategies"]["fedavg"]
    for name in STRATEGIES:
        s = results["strategies"][name]
        assert ratios[name]["bytes_up_per_update"] == pytest.approx(
            s["bytes_up_per_update"] / fedavg["bytes_up_per_update"]
        ), name
        assert ratios[name]["peak_memory_weakest_device"] == pytest.approx(
            s["peak_mem_bytes_weakest"] / fedavg["peak_mem_bytes_max"]
        ), name
    # ftte sends int8 slices against FedAvg's float32 full model.
    assert ratios["ftte"]["bytes_up_per_update"] < 0.5
    assert results["strategies"]["ftte"]["all_within_budget"]
    json.dumps(results)  # plain data, ready for --json
    assert "ftte-weakest" in format_table(results)


@pytest.mark.slow
def test_resume_reuses_earlier_runs_and_runs_only_the_missing_seeds(resumed):
    for name in STRATEGIES:
        seed0, seed1 = resumed["runs"][name]
        assert seed0["marker"] == "kept"
        assert (seed1["seed"], "marker" in seed1) == (1, False)
    assert resumed["seeds"] == 2


def test_resume_refuses_another_setting():
    earlier = {"task": "digits", "devices": 50, "time_budget_s": 120.0, "runs": {}}
    with pytest.raises(ValueError, match="devices = 50"):
        check_resumable(earlier, "digits", TINY)
