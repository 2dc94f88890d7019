"""The aggregator benchmark: the service's real ingest path and a raw floor, same bytes."""

import json

import numpy as np
import pytest

from ftte.bench.aggregator import (
    aggregator_benchmark,
    format_table,
    handoff_batch,
    ingest,
    make_batch,
    owner_from_workers,
    raw_loop,
)
from ftte.tasks import load_task
from orchestrator.checkpoint import Journal


def test_ingest_accepts_every_update_and_aggregates_every_k():
    task = load_task("digits", num_devices=20, seed=0)
    batch = make_batch("ftte", task, devices=20, seed=0)
    assert len(batch.payloads) == 20
    before = {n: a.copy() for n, a in batch.server.params.items()}
    ingest(batch, journal=None)
    assert batch.server.accepted == 20 and not batch.server.rejected
    assert batch.server.version == 2  # K = 10
    assert any(not np.array_equal(before[n], a) for n, a in batch.server.params.items())


def test_through_workers_the_owner_reaches_the_very_model_of_the_single_process(tmp_path):
    task = load_task("digits", num_devices=10, seed=0)
    single = make_batch("ftte", task, devices=10, seed=0)
    ingest(single, journal=None)
    sharded = handoff_batch("ftte", task, devices=10, seed=0)
    journal = Journal(tmp_path)
    owner_from_workers(sharded, journal)
    journal.close()
    assert single.server.version == 1  # one aggregation (K = 10)
    assert sharded.server.accepted == 10 and sharded.server.version == 1
    for name, value in single.server.params.items():
        assert np.array_equal(sharded.server.params[name], value), name


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
            "worker",
            "owner_from_workers",
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
