"""The influence bound's running medians equal numpy's median of the devices' latest values."""

import numpy as np

from orchestrator.latest_median import LatestMedian


def test_the_median_is_numpys_over_each_devices_latest_value():
    rng = np.random.default_rng(0)
    window = LatestMedian()
    latest: dict[str, float] = {}
    for _ in range(400):
        device = f"d{rng.integers(40)}"
        value = float(rng.choice([rng.lognormal(), 60.0, 1e-30]))  # ties and extremes
        window.set(device, value)
        latest[device] = value
        assert window.median() == float(np.median(list(latest.values())))


def test_a_restored_window_has_the_same_median():
    window = LatestMedian({"a": 3.0, "b": 1.0, "c": 2.0, "d": 10.0})
    assert window.median() == 2.5
    window.set("d", 0.5)
    assert window.median() == 1.5
    assert window.latest == {"a": 3.0, "b": 1.0, "c": 2.0, "d": 0.5}
