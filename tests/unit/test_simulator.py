"""The discrete-event simulator: deterministic, fair to each strategy's rules, honest bytes."""

from collections import defaultdict
from dataclasses import replace

import numpy as np
import pytest

import ftte.sim.simulator as simulator_module
from edge_agent.runtime import RUNTIMES, make_trainer
from ftte.cli import build_parser, main, sim_config
from ftte.sim.attacks import Attack
from ftte.sim.fleet import FleetSpec, make_fleet
from ftte.sim.run import SimConfig, build_task, simulate
from ftte.sim.simulator import FleetSimulator
from ftte.tasks.base import Dataset, ModelSpec, Task
from ftte.tasks.layers import Flatten, Linear, ReLU
from ftte.tasks.objectives import CLASSIFICATION
from ftte.training import Optimizer
from orchestrator.presets import make_server
from orchestrator.releases import ReleaseStore

SMALL = SimConfig(fleet=FleetSpec(devices=6), max_updates=60, samples_per_device=40, target=1.01)


def run_simulator(config: SimConfig):
    task = build_task(config)
    server = make_server(
        config.strategy, task, train=config.train, strategy_params=config.strategy_params
    )
    profiles = make_fleet(config.fleet, server.full_model_peak(), config.seed)
    sim = FleetSimulator(server, profiles, config.fleet, config.seed, runtime=config.runtime)
    result = sim.run(time_limit_s=config.time_limit_s, max_updates=config.max_updates)
    return sim, result


def test_same_seed_gives_the_same_curve():
    config = replace(SMALL, strategy="ftte", max_updates=30, strategy_params={"buffer_size": 5})
    a, b = simulate(config), simulate(config)
    assert a["curve"] == b["curve"] and len(a["curve"]) > 3


def test_the_seed_reaches_model_fleet_and_data():
    def draws(seed: int):
        config = replace(SMALL, seed=seed)
        task = build_task(config)
        server = make_server("ftte", task, seed=seed)
        budgets = [p.budget_bytes for p in make_fleet(config.fleet, 10**6, seed)]
        return server.params, budgets, task.devices[0].y

    (params0, budgets0, labels0), (params1, budgets1, labels1) = draws(0), draws(1)
    repeat_params, repeat_budgets, repeat_labels = draws(0)
    assert budgets0 == repeat_budgets and budgets0 != budgets1
    assert list(labels0) == list(repeat_labels) and list(labels0) != list(labels1)
    for name in params0:
        assert np.array_equal(params0[name], repeat_params[name])
    assert any(not np.array_equal(params0[n], params1[n]) for n in params0)


def test_fedavg_round_lasts_as_long_as_its_slowest_device():
    config = replace(
        SMALL,
        strategy="fedavg",
        strategy_params={"clients_per_round": 3},
        fleet=FleetSpec(devices=6, stragglers=0.9, mean_work_s_to_dropout=None, mean_online_s=1e9),
    )
    _, result = run_simulator(config)
    rounds = defaultdict(list)
    for started, arrived in result.arrivals:
        rounds[started].append(arrived)
    ends = sorted(max(arrivals) for arrivals in rounds.values())
    versions = [p.time_s for p in result.curve]
    assert versions == pytest.approx(ends[: len(versions)])
    assert all(len(arrivals) == 3 for arrivals in rounds.values())


@pytest.mark.parametrize("strategy", ["ftte", "fedbuff"])
def test_dropouts_never_block_buffered_strategies(strategy):
    config = replace(
        SMALL,
        strategy=strategy,
        strategy_params={"buffer_size": 2},
        fleet=FleetSpec(devices=6, mean_work_s_to_dropout=5.0, mean_offline_s=30.0),
    )
    _, result = run_simulator(config)
    assert result.dropouts >= 10
    assert len(result.curve) >= 10


def test_counted_bytes_are_the_encoded_sizes(monkeypatch):
    sizes = {"up": [], "down": []}

    def spy(name, real):
        def wrapper(*args, **kwargs):
            out = real(*args, **kwargs)
            sizes[name].append(len(out))
            return out

        return wrapper

    monkeypatch.setattr(
        simulator_module, "encode_update", spy("up", simulator_module.encode_update)
    )
    monkeypatch.setattr(
        simulator_module, "encode_assignment", spy("down", simulator_module.encode_assignment)
    )
    config = replace(
        SMALL,
        strategy="ftte",
        fleet=FleetSpec(devices=6, mean_work_s_to_dropout=None, mean_online_s=1e9),
    )
    _, result = run_simulator(config)
    assert result.bytes_down == sizes["down"]
    produced = sorted(sizes["up"])
    for size in result.bytes_up:  # arrivals are a subset (some are still in flight)
        produced.remove(size)


def accuracy_at(strategy: str, stragglers: float, time_s: float) -> float:
    config = replace(
        SMALL,
        strategy=strategy,
        max_updates=10_000,
        time_limit_s=time_s,
        strategy_params={"clients_per_round": 6} if strategy == "fedavg" else {"buffer_size": 6},
        fleet=FleetSpec(
            devices=6, stragglers=stragglers, mean_work_s_to_dropout=None, mean_online_s=1e9
        ),
    )
    return simulate(config)["final_acc"]


@pytest.mark.slow
def test_without_stragglers_fedbuff_and_fedavg_converge_comparably():
    fedavg, fedbuff = accuracy_at("fedavg", 0.0, 200), accuracy_at("fedbuff", 0.0, 200)
    assert fedavg > 0.3 and fedbuff > 0.3  # both learned something in the same virtual time
    assert abs(fedavg - fedbuff) <= 0.15


@pytest.mark.slow
def test_with_stragglers_fedbuff_gets_further_than_fedavg_in_the_same_time():
    assert accuracy_at("fedbuff", 0.9, 200) > accuracy_at("fedavg", 0.9, 200)


def test_fedavg_round_closes_when_its_last_device_drops_out():
    config = replace(
        SMALL,
        strategy="fedavg",
        strategy_params={"clients_per_round": 3},
        max_updates=60,
        fleet=FleetSpec(devices=6, mean_work_s_to_dropout=5.0, mean_offline_s=30.0),
    )
    _, result = run_simulator(config)
    assert result.dropouts >= 5
    assert len(result.curve) >= 10


def test_a_simulation_keeps_its_best_and_last_models_as_releases(tmp_path):
    config = replace(SMALL, strategy="ftte")
    store = ReleaseStore.for_objective(tmp_path, build_task(config).objective)
    report = simulate(config, releases=store)
    best_accuracy = max(p["acc"] for p in report["curve"])
    assert store.best.metrics["accuracy"] == pytest.approx(best_accuracy)
    assert store.last.version == report["versions"]
    assert store.load(store.best).model == "digits"


def test_without_a_validation_set_the_curve_is_the_fleets_measure_of_held_out_data(tmp_path):
    config = replace(SMALL, strategy="fedbuff", holdout=0.25, max_updates=30)
    task = replace(build_task(config), validation=None)
    with pytest.raises(ValueError, match="hold out"):
        simulate(replace(config, holdout=0.0), task=task)
    store = ReleaseStore.for_objective(tmp_path, task.objective)
    report = simulate(config, task=task, releases=store)
    measured = [p for p in report["curve"] if "accuracy" in p]
    assert measured and {"loss", "accuracy", "macro_f1"} <= measured[-1].keys()
    assert store.best.metrics["accuracy"] == max(p["accuracy"] for p in measured)


DENSE = ModelSpec(
    name="dense",
    layers=(Flatten(), Linear(8, 16), ReLU(), Linear(16, 3)),
    input_shape=(1, 8),
    num_classes=3,
    objective=CLASSIFICATION,
)


def dense_task(num_devices: int, seed: int, **_options) -> Task:
    """Three overlapping classes on 8 features: a dense model either runtime trains."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 0.5, (3, 1, 8)).astype(np.float32)

    def data(n: int) -> Dataset:
        y = rng.integers(0, 3, n)
        return Dataset(centres[y] + rng.normal(0, 1, (n, 1, 8)).astype(np.float32), y)

    return Task(DENSE, [data(60) for _ in range(num_devices)], data(200), target=1.01)


def test_the_simulated_devices_train_with_the_chosen_runtime_to_the_same_curve():
    config = replace(
        SMALL, task=f"{__name__}:dense_task", max_updates=30, strategy_params={"buffer_size": 3}
    )
    curves = {}
    for runtime in RUNTIMES:
        sim, _ = run_simulator(replace(config, runtime=runtime))
        assert type(sim.models._trainer.trainer) is type(make_trainer(DENSE, runtime))
        curves[runtime] = [p.metrics["accuracy"] for p in sim.result.curve]
    # The runtimes compute the same updates up to float rounding (test_lean_runtime).
    assert len(curves["lean"]) == len(curves["torch"]) > 3
    assert np.allclose(curves["lean"], curves["torch"], atol=0.02)
    assert curves["torch"][-1] > curves["torch"][0] + 0.1  # and they learned


def test_ftte_sim_takes_the_optimizer_and_the_buffer_size_and_refuses_adam_with_momentum(
    capsys,
):
    args = build_parser().parse_args(
        ["sim", "--optimizer", "adam", "--buffer-size", "4", "--runtime", "lean"]
    )
    config = sim_config(args)
    assert config.train.optimizer is Optimizer.ADAM and config.runtime == "lean"
    assert config.strategy_params == {"buffer_size": 4}
    assert sim_config(build_parser().parse_args(["sim"])).strategy_params == {}
    assert main(["sim", "--optimizer", "adam", "--momentum", "0.9"]) == 2
    assert "momentum is SGD's" in capsys.readouterr().err


def test_an_absent_device_never_joins_and_the_others_keep_their_data_and_fleet():
    """The attack benchmark's control run: the hostile devices offline, the rest as before."""
    config = replace(SMALL, max_updates=12, strategy_params={"buffer_size": 2})
    task = dense_task(config.fleet.devices, config.seed)
    server = make_server(config.strategy, task, strategy_params=config.strategy_params)
    profiles = make_fleet(config.fleet, server.full_model_peak(), config.seed)
    absent = {profiles[1].device_id: Attack.ABSENT, profiles[4].device_id: Attack.ABSENT}
    sim = FleetSimulator(server, profiles, config.fleet, config.seed, absent)
    result = sim.run(time_limit_s=config.time_limit_s, max_updates=config.max_updates)
    assert server.accepted == 12
    assert set(server.devices) == {p.device_id for p in profiles} - set(absent)
    trained = set(result.peak_mem_bytes)
    assert trained <= set(server.devices) and len(trained) >= 3  # only the others trained
    assert sim.data[profiles[2].device_id] is task.devices[2]  # partitions stay with devices
    # Participation is counted per device, accepted updates only, and none for the absent.
    assert sum(result.accepted_by_device.values()) == 12
    assert set(result.accepted_by_device) <= set(server.devices)
