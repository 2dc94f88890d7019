"""Aggregation arithmetic on hand-computed examples, and the strategy lifecycle."""

import numpy as np
import pytest

from ftte.wire.messages import Update
from orchestrator.checkpoint import load_state, save_state
from orchestrator.influence import InfluenceBound, InfluenceSettings
from orchestrator.staleness import AgeVarianceStaleness, PolynomialStaleness
from orchestrator.strategies import make_strategy
from orchestrator.strategies.base import ReceivedUpdate, StrategyStateError
from orchestrator.strategies.fedasync import FedAsyncStrategy
from orchestrator.strategies.fedavg import FedAvgStrategy
from orchestrator.strategies.fedbuff import FedBuffStrategy
from orchestrator.strategies.ftte import FTTEStrategy


def upd(
    uid: str, delta: dict, n: int = 1, age: int = 0, device: str | None = None
) -> ReceivedUpdate:
    """An update from ``device`` (by default a device of its own, as in a buffer of K)."""
    device = device or f"dev-{uid}"
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in delta.items()}
    return ReceivedUpdate(Update(device, uid, f"{device}.1", 0, n, 0.1, 0, arrays), age)


def unbounded() -> InfluenceBound:
    """Bounds far beyond these hand-made updates: the strategies' arithmetic alone."""
    return InfluenceBound(InfluenceSettings(sample_factor=1e9, clip_factor=1e9, max_delta_rms=1e9))


def params() -> dict:
    return {
        "a": np.zeros(2, np.float32),
        "b": np.zeros(2, np.float32),
        "c": np.array([1.5, -2.5], np.float32),
    }


@pytest.mark.parametrize(
    ("age", "weight"), [(0, 1.0), (1, 0.7071067811865476), (10, 0.30151134457776363)]
)
def test_polynomial_staleness_at_ages_0_1_10(age, weight):
    # (1 + age)^-0.5: 1, 1/sqrt(2), 1/sqrt(11)
    assert PolynomialStaleness(0.5)(age, 1.0) == pytest.approx(weight)


@pytest.mark.parametrize(
    ("age", "ratio", "weight"),
    [
        (0, 1.0, 1.0),  # fresh, ordinary variance
        (1, 1.0, 0.7071067811865476),  # 2^-0.5
        (10, 1.0, 0.30151134457776363),  # 11^-0.5
        (0, 3.0, 0.5),  # 1 / (1 + 0.5 * (3 - 1))
        (10, 3.0, 0.15075567228888181),  # 11^-0.5 / 2
        (0, 0.2, 1.0),  # quieter than its peers: no penalty
    ],
)
def test_age_variance_staleness(age, ratio, weight):
    assert AgeVarianceStaleness(0.5, 0.5)(age, ratio) == pytest.approx(weight)


def test_negative_age_is_refused():
    with pytest.raises(ValueError, match="age"):
        PolynomialStaleness()(-1, 1.0)


def test_ftte_averages_each_tensor_over_the_updates_that_hold_it():
    s = FTTEStrategy(buffer_size=2, variance_coef=0.0)
    s.add(upd("u1", {"a": [1, 1], "b": [2, 4]}, n=1, age=0))
    s.add(upd("u2", {"a": [3, 3]}, n=3, age=3))
    assert s.ready()
    p = params()
    c_before = p["c"].copy()
    report = s.aggregate(p, unbounded())
    # a: (1*1*[1,1] + 0.5*3*[3,3]) / (1+3) = [5.5/4] = 1.375 ; s(3) = 0.5
    np.testing.assert_allclose(p["a"], [1.375, 1.375])
    # b: only u1 holds it: 1*1*[2,4] / 1
    np.testing.assert_allclose(p["b"], [2.0, 4.0])
    assert np.array_equal(p["c"], c_before)
    assert report.changed == {"a", "b"}
    assert report.weights == {"u1": 1.0, "u2": 0.5}
    assert p["a"].dtype == np.float32


def test_ftte_gives_the_noisier_update_less_weight():
    s = FTTEStrategy(buffer_size=2, staleness_exponent=0.0, variance_coef=1.0)
    s.add(upd("calm", {"a": [1, -1]}))  # variance 1
    s.add(upd("noisy", {"a": [3, -3]}))  # variance 9; mean 5 -> ratios 0.2 and 1.8
    p = params()
    report = s.aggregate(p, unbounded())
    # weights: calm 1, noisy 1/(1 + 0.8) = 5/9; a = (1*[1,-1] + 5/9*[3,-3]) / 2
    assert report.weights["noisy"] == pytest.approx(5 / 9)
    np.testing.assert_allclose(p["a"], [(1 + 5 / 3) / 2, -(1 + 5 / 3) / 2], rtol=1e-6)


def test_ftte_server_learning_rate_scales_the_step():
    s = FTTEStrategy(buffer_size=1, server_lr=0.5, variance_coef=0.0)
    s.add(upd("u", {"a": [2, 2]}))
    p = params()
    s.aggregate(p, unbounded())
    np.testing.assert_allclose(p["a"], [1.0, 1.0])


def test_fedbuff_divides_staleness_weighted_sum_by_k():
    s = FedBuffStrategy(buffer_size=2)
    s.add(upd("u1", {"a": [2, 2], "b": [1, 1]}, age=0))
    s.add(upd("u2", {"a": [4, 4], "b": [1, 1]}, age=3))
    p = params()
    s.aggregate(p, unbounded())
    # a: (1*2 + 0.5*4) / 2 = 2 ; b: (1 + 0.5) / 2 = 0.75
    np.testing.assert_allclose(p["a"], [2.0, 2.0])
    np.testing.assert_allclose(p["b"], [0.75, 0.75])


def test_fedavg_weights_by_samples():
    s = FedAvgStrategy(clients_per_round=2)
    rng = np.random.default_rng(0)
    assert sorted(s.select(["x", "y", "z"], 0, rng)) in (["x", "y"], ["x", "z"], ["y", "z"])
    chosen = list(s._waiting)
    s.add(upd("u1", {"a": [1, 1]}, n=1, device=chosen[0]))
    assert not s.ready()
    s.add(upd("u2", {"a": [5, 5]}, n=3, device=chosen[1]))
    assert s.ready()
    p = params()
    s.aggregate(p, unbounded())
    # (1*1 + 3*5) / 4 = 4
    np.testing.assert_allclose(p["a"], [4.0, 4.0])


def test_fedavg_selects_nobody_while_a_round_is_open():
    s = FedAvgStrategy(clients_per_round=1)
    rng = np.random.default_rng(0)
    assert len(s.select(["x", "y"], 0, rng)) == 1
    assert s.select(["x", "y"], 1, rng) == []


def test_fedavg_opens_a_round_only_when_enough_devices_are_idle():
    s = FedAvgStrategy(clients_per_round=3, min_available_clients=3)
    rng = np.random.default_rng(0)
    assert s.select(["x", "y"], 0, rng) == []
    assert sorted(s.select(["x", "y", "z"], 0, rng)) == ["x", "y", "z"]


def test_fedavg_round_closes_when_its_devices_drop_out():
    s = FedAvgStrategy(clients_per_round=2)
    rng = np.random.default_rng(0)
    a, b = s.select(["x", "y"], 0, rng)
    s.add(upd("u1", {"a": [2, 2]}, device=a))
    s.on_dropout(b)
    assert s.ready()
    p = params()
    s.aggregate(p, unbounded())
    np.testing.assert_allclose(p["a"], [2.0, 2.0])
    assert s.select(["x", "y"], 0, rng) != []


def test_fedavg_refuses_updates_from_outside_the_round():
    s = FedAvgStrategy(clients_per_round=1)
    s.select(["x"], 0, np.random.default_rng(0))
    with pytest.raises(StrategyStateError):
        s.add(upd("u", {"a": [1, 1]}, device="intruder"))


def test_fedasync_applies_each_update_at_once():
    s = FedAsyncStrategy(alpha=0.6)
    s.add(upd("u1", {"a": [1, 1]}, age=3))
    assert s.ready()
    p = params()
    s.aggregate(p, unbounded())
    # 0.6 * (1+3)^-0.5 * 1 = 0.3
    np.testing.assert_allclose(p["a"], [0.3, 0.3])


def checkpointed(strategy, tmp_path, name):
    """A fresh strategy loaded from ``strategy``'s state after a trip through the file."""
    save_state(tmp_path, {"strategy": strategy.state_dict()})
    restored = make_strategy(name, {"buffer_size": 2} if name in ("ftte", "fedbuff") else {})
    restored.load_state_dict(load_state(tmp_path)["strategy"])
    return restored


@pytest.mark.parametrize("name", ["ftte", "fedbuff", "fedavg", "fedasync"])
def test_a_restored_strategy_continues_exactly_as_the_original(name, tmp_path):
    """select → add → checkpoint → restore → add → aggregate gives the same model."""
    rng = np.random.default_rng(0)
    params_of = {}
    for run in ("original", "restored"):
        s = make_strategy(name, {"buffer_size": 2} if name in ("ftte", "fedbuff") else {})
        s.select(["x", "y"], 0, rng if run == "original" else np.random.default_rng(0))
        s.add(upd("u1", {"a": [1, 2]}, n=3, age=1, device="x"))
        if run == "restored":
            s = checkpointed(s, tmp_path, name)
        if name != "fedasync":  # FedAsync applies each update alone
            assert not s.ready()
            s.add(upd("u2", {"a": [4, -2], "b": [1, 1]}, n=1, age=0, device="y"))
        assert s.ready()
        p = params()
        report = s.aggregate(p, unbounded())
        params_of[run] = (p, report.weights)
        assert not s.buffered()
    original, restored = params_of["original"], params_of["restored"]
    for tensor in original[0]:
        np.testing.assert_array_equal(original[0][tensor], restored[0][tensor])
    assert original[1] == restored[1]
    assert np.any(original[0]["a"] != 0)


def test_a_restored_fedavg_round_still_waits_for_its_devices(tmp_path):
    s = FedAvgStrategy(clients_per_round=2)
    a, b = s.select(["x", "y", "z"], 0, np.random.default_rng(0))
    s.add(upd("u1", {"a": [1, 1]}, device=a))
    restored = checkpointed(s, tmp_path, "fedavg")
    assert restored.select(["z"], 1, np.random.default_rng(0)) == []  # the round is open
    assert not restored.ready()
    restored.add(upd("u2", {"a": [3, 3]}, device=b))
    assert restored.ready()


def test_unknown_strategy_lists_the_valid_names():
    with pytest.raises(ValueError, match="fedavg"):
        make_strategy("fedprox", {})


def test_unknown_parameter_is_named_with_the_ones_it_takes():
    with pytest.raises(ValueError, match=r"strategy\.bogus: .*buffer_size \(default 10\)"):
        make_strategy("ftte", {"bogus": 1})


def test_a_parameter_of_the_wrong_type_is_named():
    with pytest.raises(ValueError, match=r"strategy\.server_lr: expected a number"):
        make_strategy("fedavg", {"server_lr": "fast"})


@pytest.mark.parametrize("make", [FedBuffStrategy, FTTEStrategy])
def test_k_grows_with_the_devices_training(make):
    rng = np.random.default_rng(0)
    s = make(buffer_size=10)
    s.select([f"d{i}" for i in range(50)], 0, rng)
    assert s.k == 10  # a tenth of 50 is below the floor
    s.select([f"d{i}" for i in range(300)], 200, rng)
    assert s.k == 50  # a tenth of the 500 now training
    s.select([], 120, rng)
    assert s.k == 12
    s.select([], 300, rng)
    restored = make(buffer_size=10)
    restored.load_state_dict(s.state_dict())
    assert restored.k == 30  # a checkpoint restores K with the devices training


def test_ftte_steps_are_the_per_holder_formula_to_the_bit():
    # The aggregator takes each tensor's weights in array operations on a float64 matrix;
    # the model must be exactly what the formula, holder by holder, gives.
    rng = np.random.default_rng(3)
    shapes = {"a": (7, 5), "b": (300,), "c": (2,)}
    buffer = [
        upd(
            f"u{i}",
            {
                n: rng.standard_normal(s) * rng.uniform(0.1, 3)
                for n, s in shapes.items()
                if n != "a" or i % 3
            },
            n=int(rng.integers(1, 90)),
            age=int(rng.integers(0, 6)),
        )
        for i in range(12)
    ]
    strategy = FTTEStrategy(buffer_size=12)
    staleness = strategy.staleness
    expected = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    got = {n: v.copy() for n, v in expected.items()}
    for name in shapes:
        holders = [r for r in buffer if name in r.update.delta]
        stacked = np.stack([r.update.delta[name].ravel() for r in holders])
        variances = stacked.var(axis=1, dtype=np.float64)
        mean_var = float(variances.mean())
        weighted = np.array(
            [
                staleness(r.age, float(v / mean_var)) * r.update.num_samples
                for r, v in zip(holders, variances, strict=True)
            ]
        )
        coefs = weighted / sum(r.update.num_samples for r in holders)
        expected[name] += (coefs @ stacked).reshape(shapes[name]).astype(np.float32)
    for r in buffer:
        strategy.add(r)
    strategy.aggregate(got, unbounded())
    for name in shapes:
        assert np.array_equal(got[name], expected[name]), name


def test_the_variance_penalty_of_an_array_is_the_weights_one_by_one():
    staleness = AgeVarianceStaleness(0.5, 0.7)
    ratios = np.array([0.0, 0.5, 1.0, 1.0 + 1e-12, 1.7, 42.0])
    penalties = staleness.penalty(ratios)
    for age in (0, 3):
        for ratio, penalty in zip(ratios, penalties, strict=True):
            assert staleness.decay(age) / penalty == staleness(age, float(ratio))
