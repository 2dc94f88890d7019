"""The aggregator benchmark: the service's real ingest path and a raw floor, same bytes."""

import json

import numpy as np
import pytest

from ftte.bench.aggregator import aggregator_benchmark, format_table, ingest, make_batch, raw_loop
from ftte.tasks import load_task


def test_ingest_accepts_every_update_and_aggregates_every_k():
    task = load_task("digits", num_devices=20, seed=0)
    batch = make_batch("ftte", task, devices=20, seed=0)
    assert len(batch.payloads) == 20
    before = {n: a.copy() for n, a in batch.server.params.items()}
    ingest(batch, journal=None)
    assert batch.server.accepted == 20 and not batch.server.rejected
    assert batch.server.version == 2  # K = 10
    assert any(not np.array_equal(before[n], a) for n, a in batch.server.params.items())


def test_raw_loop_adds_every_tensor_of_every_payload():
    task = load_task("digits", num_devices=8, seed=0)
    batch = make_batch("fedbuff", task, devices=8, seed=0)
    before = {n: a.copy() for n, a in batch.server.params.items()}
    raw_loop(batch)
    # fedbuff updates carry the full model, so the floor touches every tensor.
    assert all(not np.array_equal(before[n], a) for n, a in batch.server.params.items())


def test_report_has_rates_and_ratios_per_preset():
    results = aggregator_benchmark("digits", devices=10, repeats=1)
    for r in results["presets"].values():
        paths = {
            "raw_decode_axpy",
            "aggregator",
            "aggregator_with_journal",
            "aggregator_with_journal_fsync_each",
        }
        assert set(r["updates_per_s"]) == paths
        assert all(rate > 0 for rate in r["updates_per_s"].values())
        raw = r["updates_per_s"]["raw_decode_axpy"]
        assert r["ratio_to_raw"] == pytest.approx(
            {path: rate / raw for path, rate in r["updates_per_s"].items()}
        )
        assert set(r["updates_per_cpu_s"]) == paths
        raw_cpu = r["updates_per_cpu_s"]["raw_decode_axpy"]
        assert r["cpu_ratio_to_raw"] == pytest.approx(
            {path: rate / raw_cpu for path, rate in r["updates_per_cpu_s"].items()}
        )
    assert (
        results["presets"]["ftte"]["bytes_per_update_mean"]
        < (results["presets"]["fedbuff"]["bytes_per_update_mean"])
    )
    json.dumps(results)
    assert "aggregator_with_journal" in format_table(results)
