"""Releases: the wire form of a trained model, and the run's store of best, last and newest."""

import json

import numpy as np
import pytest

from ftte.errors import Rejected
from ftte.wire.codec import decode_release, encode_release
from ftte.wire.messages import Release
from orchestrator.releases import INDEX, ReleaseStore


def release(version: int, accuracy: float) -> Release:
    tensors = {"0.weight": np.full((2, 3), version, np.float32), "0.bias": np.zeros(2, np.float32)}
    return Release("job-1", version, "digits", {"accuracy": accuracy, "loss": 1.0}, tensors, 1e9)


def test_a_release_round_trips_exactly_and_checks_the_model_it_is_for():
    r = release(3, 0.9)
    back = decode_release(encode_release(r), expected_shapes={"0.weight": (2, 3), "0.bias": (2,)})
    assert (back.job, back.version, back.model, back.metrics) == ("job-1", 3, "digits", r.metrics)
    for name, value in r.tensors.items():
        np.testing.assert_array_equal(back.tensors[name], value)
    with pytest.raises(Rejected, match="differ"):
        decode_release(encode_release(r), expected_shapes={"0.weight": (2, 3)})


def test_the_store_keeps_the_best_the_last_and_the_newest(tmp_path):
    store = ReleaseStore(tmp_path, metric="accuracy", keep=2)
    for version, accuracy in [(1, 0.5), (2, 0.9), (3, 0.7), (4, 0.6), (5, 0.8)]:
        store.offer(release(version, accuracy))
    assert store.best.version == 2 and store.last.version == 5
    assert [s.version for s in store.kept()] == [2, 4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        INDEX,
        "v2.release",
        "v4.release",
        "v5.release",
    ]
    best = store.load(store.best)
    np.testing.assert_array_equal(best.tensors["0.weight"], np.full((2, 3), 2, np.float32))
    reopened = ReleaseStore(tmp_path, metric="accuracy", keep=2)  # after a restart
    assert reopened.best == store.best and reopened.last == store.last
    assert json.loads((tmp_path / INDEX).read_text())["best"]["sha256"] == store.best.sha256


def test_a_stored_release_whose_bytes_changed_is_refused(tmp_path):
    store = ReleaseStore(tmp_path, metric="accuracy")
    stored = store.offer(release(1, 0.5))
    path = tmp_path / stored.file
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ValueError, match="does not match its hash"):
        store.load(stored)


def test_a_lower_is_better_metric_picks_the_lowest(tmp_path):
    store = ReleaseStore(tmp_path, metric="loss", lower_is_better=True)
    store.offer(Release("j", 1, "m", {"loss": 0.5}, {}, 0.0))
    store.offer(Release("j", 2, "m", {"loss": 0.2}, {}, 0.0))
    store.offer(Release("j", 3, "m", {"loss": 0.4}, {}, 0.0))
    assert store.best.version == 2


def test_releases_are_compared_on_the_devices_both_were_measured_by(tmp_path):
    store = ReleaseStore(tmp_path, metric="mse", lower_is_better=True)
    fast = {"fast-0": (100, 0.010), "fast-1": (100, 0.012)}
    store.offer(Release("j", 1, "m", {"mse": 0.011}, {}, 0.0), fast)
    # A straggler's report (its pump unknown to the model) joins the fleet's measure:
    # overall 0.043 is worse than 0.011, yet the fast devices measure version 2 as better.
    with_slow = {"fast-0": (100, 0.008), "fast-1": (100, 0.010), "slow": (100, 0.110)}
    assert store.keep_if_best(Release("j", 2, "m", {"mse": 0.043}, {}, 0.0), with_slow)
    assert store.best.version == 2
    # Worse on the devices in common is not kept, though better overall (no straggler).
    worse = {"fast-0": (100, 0.009), "fast-1": (100, 0.011)}
    assert store.keep_if_best(Release("j", 3, "m", {"mse": 0.010}, {}, 0.0), worse) is None
    # No device in common (or no per-device reports): the overall values decide.
    assert store.keep_if_best(Release("j", 4, "m", {"mse": 0.040}, {}, 0.0), {"other": (9, 0.04)})
    reopened = ReleaseStore(tmp_path, metric="mse", lower_is_better=True)
    assert reopened.best == store.best and reopened.best.by_device == {"other": (9, 0.04)}
