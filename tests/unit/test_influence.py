"""Bounded influence: what one update can do to the model, whatever it claims."""

from dataclasses import replace

import numpy as np
import pytest

from ftte.wire.messages import Update
from orchestrator.influence import InfluenceBound, InfluenceSettings, RobustRule
from orchestrator.strategies.base import ReceivedUpdate


def upd(uid: str, a: list[float], n: int = 60, device: str | None = None) -> ReceivedUpdate:
    delta = {"a": np.asarray(a, dtype=np.float32)}
    device = device or uid
    return ReceivedUpdate(Update(device, uid, f"{device}.1", 0, n, 0.1, 0, delta), 0)


HONEST = [upd(f"h{i}", [0.01 * (1 + i % 3), -0.01]) for i in range(6)]


def test_a_huge_sample_count_is_capped_at_twice_the_median():
    bounded = InfluenceBound(InfluenceSettings()).apply([*HONEST, upd("x", [0.01, -0.01], 2**53)])
    assert bounded.updates[-1].update.num_samples == 120
    assert bounded.capped == {"x"}
    assert [r.update.num_samples for r in bounded.updates[:-1]] == [60] * 6


def test_a_huge_delta_is_clipped_to_three_times_the_median_norm():
    bound = InfluenceBound(InfluenceSettings())
    bounded = bound.apply([*HONEST, upd("x", [3e38, -3e38])])
    norms = [float(np.linalg.norm(r.update.delta["a"])) for r in bounded.updates]
    assert norms[-1] == pytest.approx(3 * np.median([*norms[:-1], np.hypot(3e38, 3e38)]), 1e-5)
    assert np.all(np.isfinite(bounded.updates[-1].update.delta["a"]))
    assert bounded.clipped == {"x"} and norms[:-1] == pytest.approx(
        [np.linalg.norm(r.update.delta["a"]) for r in HONEST]
    )


def test_with_no_history_a_lone_update_is_held_to_the_absolute_rms_cap():
    bound = InfluenceBound(InfluenceSettings(max_delta_rms=0.5))
    (alone,) = bound.apply([upd("x", [1e30, 1e30])]).updates
    np.testing.assert_allclose(alone.update.delta["a"], [0.5, 0.5], rtol=1e-6)


def test_a_fast_device_sending_many_updates_cannot_move_the_bound():
    bound = InfluenceBound(InfluenceSettings())
    bound.apply(HONEST)
    for i in range(50):  # one device, fifty batches of its own huge updates
        bound.apply([upd(f"x{i}", [5.0, 5.0], n=10_000, device="x")])
    (probe,) = bound.apply([upd("x-last", [5.0, 5.0], n=10_000, device="x")]).updates
    honest_median = np.median([np.linalg.norm(r.update.delta["a"]) for r in HONEST])
    assert np.linalg.norm(probe.update.delta["a"]) <= 3 * honest_median * 1.0001
    assert probe.update.num_samples == 120


def test_the_window_remembers_honest_norms_for_a_later_lone_update():
    bound = InfluenceBound(InfluenceSettings())
    bound.apply(HONEST)
    (alone,) = bound.apply([upd("x", [10.0, 10.0])]).updates
    honest_median = np.median([np.linalg.norm(r.update.delta["a"]) for r in HONEST])
    # The median over the six honest norms and this one is still an honest norm.
    assert np.linalg.norm(alone.update.delta["a"]) <= 3 * honest_median * 1.0001


def test_a_restored_bound_gives_the_same_bounds():
    original = InfluenceBound(InfluenceSettings())
    original.apply(HONEST)
    restored = InfluenceBound(InfluenceSettings())
    restored.load_state_dict(original.state_dict())
    probe = [upd("x", [5.0, 5.0], n=10_000)]
    a, b = original.apply(probe).updates[0].update, restored.apply(probe).updates[0].update
    assert a.num_samples == b.num_samples < 10_000
    np.testing.assert_array_equal(a.delta["a"], b.delta["a"])


@pytest.mark.parametrize("rule", [RobustRule.MEDIAN, RobustRule.TRIMMED_MEAN])
def test_a_robust_rule_ignores_an_outlier_that_the_mean_follows(rule):
    stacked = np.array([[1.0, 2.0], [1.1, 2.1], [0.9, 1.9], [1.0, 2.0], [-50.0, 80.0]])
    coefs = np.full(5, 0.2)
    mean = InfluenceBound(InfluenceSettings()).combine(stacked, coefs)
    robust = InfluenceBound(InfluenceSettings(robust_rule=rule)).combine(stacked, coefs)
    assert mean[0] < -5
    np.testing.assert_allclose(robust, [1.0, 2.0], atol=0.05)


def test_settings_name_the_field_and_the_bound():
    with pytest.raises(ValueError, match="clip_factor"):
        InfluenceSettings(clip_factor=0.5)
    with pytest.raises(ValueError, match="trim_fraction"):
        InfluenceSettings(trim_fraction=0.5)


def test_a_device_with_several_updates_in_a_batch_gets_one_row():
    fast = [
        ReceivedUpdate(replace(upd(f"f{i}", [1.0, 1.0]).update, device_id="fast"), age=i)
        for i in range(3)
    ]
    bounded = InfluenceBound(InfluenceSettings(max_delta_rms=1e9, clip_factor=1e9)).apply(
        [*fast, *HONEST]
    )
    assert len(bounded.updates) == 1 + len(HONEST)
    folded = bounded.updates[0]
    assert folded.update.update_id == "f2" and folded.age == 2
    assert bounded.merged == {"f0", "f1"}


def test_a_tensor_held_only_by_hostile_devices_is_capped_by_the_fleets_median_rms():
    bound = InfluenceBound(InfluenceSettings())
    bound.apply(HONEST)  # honest devices train tensor "a" only
    hostile = [
        ReceivedUpdate(
            Update(d, f"{d}-u", f"{d}.1", 0, 60, 0.1, 0, {"b": np.full(4, 5.0, np.float32)}), 0
        )
        for d in ("x", "y", "z")
    ]
    bounded = bound.apply(hostile)  # every holder of "b" is hostile: its median is theirs
    # 3 of 9 devices are hostile: the median RMS is an honest device's.
    honest_rms = max(np.sqrt(np.mean(r.update.delta["a"] ** 2)) for r in HONEST)
    for r in bounded.updates:
        assert np.sqrt(np.mean(r.update.delta["b"] ** 2)) <= 3 * honest_rms * 1.0001


def test_with_equal_say_a_device_in_every_aggregation_is_scaled_to_the_mean_rate():
    bound = InfluenceBound(InfluenceSettings(equal_say_window=10))
    for i in range(40):  # "fast" joins every aggregation, each of six others one in six
        bound.apply([upd(f"f{i}", [0.01, -0.01], device="fast"), HONEST[i % 6]])
    fast, slow = bound.apply([upd("f-last", [0.01, -0.01], device="fast"), HONEST[0]]).updates
    assert np.allclose(slow.update.delta["a"], HONEST[0].update.delta["a"])
    # Rates: fast about 1, the others about 1/6, mean (1 + 6/6) / 7: the factor about 2/7.
    say = float(fast.update.delta["a"][0] / 0.01)
    assert 0.2 < say < 0.4


def test_equal_say_is_off_by_default():
    bound = InfluenceBound(InfluenceSettings())
    for i in range(20):
        bound.apply([upd(f"f{i}", [0.01, -0.01], device="fast"), HONEST[i % 6]])
    (fast,) = bound.apply([upd("f-last", [0.01, -0.01], device="fast")]).updates
    np.testing.assert_allclose(fast.update.delta["a"], [0.01, -0.01])


def _fast_flipper_run(settings: InfluenceSettings) -> np.ndarray:
    """The diagnosed failure, small: a fast device sending −4 × an honest delta joins every
    aggregation of a tensor, next to one of six honest devices in turn (FTTE's early
    tensors: two holders each time). The sum of the sample-weighted mean steps."""
    rng = np.random.default_rng(0)
    bound = InfluenceBound(settings)
    total = np.zeros(8)
    for i in range(24):
        honest = upd(f"h{i}", list(0.01 + 0.003 * rng.standard_normal(8)), device=f"h{i % 6}")
        flipped = upd(f"x{i}", list(-0.04 - 0.012 * rng.standard_normal(8)), device="x")
        taken = bound.apply([flipped, honest]).updates
        stacked = np.stack([r.update.delta["a"] for r in taken])
        coefs = np.array([r.update.num_samples for r in taken], dtype=np.float64)
        total += bound.combine(stacked, coefs / coefs.sum())
    return total


def test_a_flipped_fast_device_outpulls_its_co_holder_when_only_clipped():
    assert np.all(_fast_flipper_run(InfluenceSettings()) < 0)


def test_the_direction_screen_removes_a_flipped_fast_devices_pull():
    total = _fast_flipper_run(InfluenceSettings(screen=True))
    # Screened from the batch where three honest devices have voted: all but two pull up.
    assert np.all(total > 0.7 * 22 * 0.01)


def test_the_screen_leaves_a_tensor_alone_until_enough_other_devices_voted():
    bound = InfluenceBound(InfluenceSettings(screen=True, screen_min_voters=3))
    first = bound.apply([upd("h0", [1.0, 1.0]), upd("x0", [-1.0, -1.0], device="x")])
    assert first.screened == frozenset() and len(first.updates) == 2
    bound.apply([upd("h1", [1.0, 0.9]), upd("h2", [0.9, 1.0])])
    later = bound.apply([upd("x1", [-1.0, -1.0], device="x"), upd("h3", [1.0, 1.1])])
    assert later.screened == {"x1"} and [r.update.update_id for r in later.updates] == ["h3"]


def test_the_screen_judges_a_device_by_its_recent_mean_not_one_disagreement():
    bound = InfluenceBound(InfluenceSettings(screen=True))
    bound.apply([upd(f"{d}0", [1.0, 1.0], device=d) for d in "pqr"])
    for i in range(3):
        assert not bound.apply([upd(f"h{i}", [1.0, 0.8], device="h")]).screened
    # One opposing update: its mean score over four judged updates is still positive.
    assert not bound.apply([upd("h3", [-1.0, -0.8], device="h")]).screened
    assert bound.apply([upd("x0", [-1.0, -0.8], device="x")]).screened == {"x0"}


def test_a_restored_screen_judges_as_before():
    original = InfluenceBound(InfluenceSettings(screen=True))
    original.apply(HONEST)
    restored = InfluenceBound(InfluenceSettings(screen=True))
    restored.load_state_dict(original.state_dict())
    probe = [upd("x", [-0.02, 0.01])]
    assert original.apply(probe).screened == restored.apply(probe).screened == {"x"}


def test_screen_settings_name_the_field():
    with pytest.raises(ValueError, match="min_cosine"):
        InfluenceSettings(min_cosine=1.0)
    with pytest.raises(ValueError, match="screen_min_voters"):
        InfluenceSettings(screen_min_voters=0)
    with pytest.raises(ValueError, match="screen_window"):
        InfluenceSettings(screen_window=0)


def test_the_screen_weighs_a_tensor_by_its_size_so_an_agreeing_bias_hides_nothing():
    """A device flipping its large weight tensor while its 2-value bias agrees is screened:
    with one vote per tensor (before) its mean cosine was 0, and it was kept."""

    def update(uid: str, device: str, sign: float) -> ReceivedUpdate:
        w = np.linspace(0.5, 1.5, 64, dtype=np.float32) * sign
        delta = {"w": w, "b": np.asarray([0.1, 0.1], dtype=np.float32)}
        return ReceivedUpdate(Update(device, uid, f"{device}.1", 0, 60, 0.1, 0, delta), 0)

    bound = InfluenceBound(InfluenceSettings(screen=True))
    bound.apply([update(f"{d}0", d, 1.0) for d in "pqr"])
    judged = bound.apply([update("x0", "x", -1.0), update("h0", "h", 1.0)])
    assert judged.screened == {"x0"} and [r.update.update_id for r in judged.updates] == ["h0"]
