"""Benchmark: the forecasting and anomaly-detection examples, federated against central.

For each example it generates the logs, then

- trains the model federated in ``ftte sim`` (the FTTE preset on a fleet of stragglers with
  memory budgets from ``WEAKEST`` of full-model training up, for the example's number of
  accepted updates) with no central validation set: each device holds out a fifth of its
  windows and measures every model it is sent on them; the best release is kept by the fleet's
  measure of the objective's primary metric;
- trains the same model centrally on the pooled training windows of every device (the
  whole model, the same optimizer settings, ``--central-epochs`` epochs, keeping the best
  epoch on the pooled held-out windows; ``--central-only`` trains only this reference, e.g.
  for longer, the simulated runs being the same for a seed);
- measures both models on the pooled held-out windows (the same windows for both: the
  split is by a hash of each window), and for the anomaly detector on test logs it was never
  trained on, with injected faults: the AUC of the anomaly score, and what each device's
  own threshold flags.

    python examples/bench_objectives.py --out docs/bench-objectives.json
    python examples/bench_objectives.py --central-only --central-epochs 200 \
        --out docs/bench-objectives-central.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_agent.predict import Predictor
from edge_agent.runtime import REFERENCE, RUNTIMES, make_trainer
from edge_agent.trainer import TorchModel
from ftte.sim.fleet import FleetSpec
from ftte.sim.run import SimConfig, build_task, simulate
from ftte.sim.simulator import CurvePoint
from ftte.tasks.base import Dataset, ModelSpec, hold_out
from ftte.tasks.objectives import roc_auc
from ftte.training import Optimizer, TrainSettings
from ftte.wire.messages import Release, TrainConfig
from orchestrator.releases import ReleaseStore

HERE = Path(__file__).resolve().parent
DEVICES = 5
HOLDOUT = 0.2
# These models are small enough that fixed costs (the input batch, the frozen prefix's
# chunk) are 30 % of whole-model training: a budget below that holds no slice, and the
# simulator's default weakest class (12 %) would leave those devices out of the job.
WEAKEST = 0.35
# Updates per aggregation: one per device. The strategy's default K (10) is above this
# fleet's size, so every aggregation folded several updates of each device into their mean
# (one row per device): measured on the pump at 300 accepted updates, K = 10 reached fleet
# MSE 0.070 at version 20, K = 5 0.054 at version 20 and 0.026 at version 40 (the same
# updates). local_fleet.sh and docs/your-data.md set K to the fleet's size for this reason.
BUFFER_SIZE = DEVICES
EXAMPLES: dict[str, dict[str, Any]] = {
    "forecast": {
        "task": "forecast_task:task",
        "logs_env": "FORECAST_LOGS",
        "make_logs": ["--devices", str(DEVICES), "--days", "20"],
        "train": TrainSettings(epochs=2, batch_size=32, lr=0.01, momentum=0.9),
        "updates": 600,
    },
    "pump": {
        "task": "pump_task:task",
        "logs_env": "PUMP_LOGS",
        "make_logs": ["--devices", str(DEVICES), "--seconds", "120"],
        "test_logs": ["--devices", str(DEVICES), "--seconds", "30", "--anomalies", "0.1"],
        # 10 local steps (of the 2 epochs' 38): the same MSE per round at a quarter of the
        # compute (examples/pump/drift_check.py, docs/benchmarks.md), spent on more updates.
        "train": TrainSettings(
            epochs=2, batch_size=32, lr=0.003, optimizer=Optimizer.ADAM, steps=10
        ),
        "updates": 5000,
    },
}


def _make_logs(example: str, out: Path, args: list[str], seed: int) -> None:
    sys.argv = ["make_logs.py", "--out", str(out), "--seed", str(seed), *args]
    module = importlib.import_module("make_logs")
    module.main()
    del sys.modules["make_logs"]  # each example has its own make_logs.py


def _progress(name: str) -> Any:
    def show(point: CurvePoint) -> None:
        if point.version % 20 == 0:
            print(f"[{name}] version {point.version} {point.metrics}", file=sys.stderr)

    return show


def _pooled(parts: list[Dataset]) -> Dataset:
    return Dataset(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))


def _central(
    spec: ModelSpec, train: Dataset, held: Dataset, settings: TrainSettings, epochs: int
) -> Any:
    """The best epoch's held-out metrics and parameters of the model trained on ``train``."""
    torch.manual_seed(0)
    model = TorchModel(spec)
    names = tuple(model.parameter_shapes())
    # Epoch by epoch, each whole: the devices' steps cap is a federated setting.
    config = TrainConfig(**(asdict(settings) | {"epochs": 1, "steps": 0}))
    primary = spec.objective.primary
    best: tuple[dict[str, float], dict[str, np.ndarray]] | None = None
    for epoch in range(epochs):
        result = model.train(names, train, config, seed=epoch)
        params = model.model.named_parameters()
        values = {n: p.detach().numpy() + result.delta[n] for n, p in params}
        model.load(values)
        metrics = model.evaluate(held).metrics
        if best is None or spec.objective.better(metrics[primary], best[0][primary]):
            best = (metrics, {n: v.copy() for n, v in values.items()})
    assert best is not None
    return best


def _anomaly_test(
    spec: ModelSpec, values: dict[str, np.ndarray], test: list[Dataset], held: list[Dataset]
) -> dict[str, Any]:
    """The anomaly detector on the unseen test windows: AUC of the raw score pooled over
    devices, AUC of the score as each device decides on it (over its own threshold), each
    device's own AUC, and the flags of each device's own threshold."""
    model = make_trainer(spec, "lean")
    model.load(values)
    pooled = _pooled(test)
    scores = spec.objective.metrics(model.logits(pooled.x), pooled)
    release = Release("bench", 0, spec.name, {}, values, 0.0)
    relative, by_device = [], {}
    flagged = caught = normal = faults = 0
    for index, (device_test, device_held) in enumerate(zip(test, held, strict=True)):
        # Each device's threshold from its own held-out windows, as its agent sets it.
        predictor = Predictor(model, release, "", spec.objective, device_held)
        answers = predictor.predict(device_test.x)
        flags = np.array([a["anomaly"] for a in answers])
        score = np.array([a["score"] / a["threshold"] for a in answers])
        relative.append(score)
        by_device[f"dev-{index}"] = roc_auc(device_test.y, score)
        faulty = device_test.y == 1
        caught += int(flags[faulty].sum())
        faults += int(faulty.sum())
        flagged += int(flags[~faulty].sum())
        normal += int((~faulty).sum())
    return {
        "test_auc": scores["auc"],
        # Raw reconstruction errors differ in scale from pump to pump; a device flags a
        # window by its error over its own threshold, so this is the deployed detector's.
        "test_auc_own_threshold": roc_auc(pooled.y, np.concatenate(relative)),
        "test_auc_by_device": by_device,
        "test_windows": len(pooled),
        "test_faulty_windows": faults,
        "faults_flagged_share": caught / faults,
        "normal_flagged_share": flagged / normal,
    }


def sim_config(
    name: str,
    fleet: FleetSpec,
    seed: int,
    runtime: str,
    strategy_params: dict[str, Any] | None = None,
) -> SimConfig:
    """The simulated job of example ``name`` on ``fleet``: the FTTE preset with K = the
    fleet's size, the example's training settings, all of its updates."""
    example = EXAMPLES[name]
    return SimConfig(
        task=example["task"],
        strategy="ftte",
        fleet=fleet,
        seed=seed,
        holdout=HOLDOUT,
        target=0.0,  # never reached (a perfect model): every run takes all its updates
        time_limit_s=30 * 24 * 3600.0,
        max_updates=example["updates"],
        train=example["train"],
        strategy_params={"buffer_size": BUFFER_SIZE} | (strategy_params or {}),
        runtime=runtime,
    )


def run_example(
    name: str,
    work: Path,
    seed: int,
    central_epochs: int,
    sim: bool = True,
    runtime: str = REFERENCE,
    stragglers: float = FleetSpec.stragglers,
    weakest: float = WEAKEST,
    strategy_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Federated (unless not ``sim``) and central training of one example; their measures
    side by side."""
    example = EXAMPLES[name]
    folder = HERE / name
    sys.path.insert(0, str(folder))
    logs = work / name / "logs"
    _make_logs(name, logs, example["make_logs"], seed)
    os.environ[example["logs_env"]] = str(logs)
    config = sim_config(
        name,
        FleetSpec(devices=DEVICES, weakest_fraction=weakest, stragglers=stragglers),
        seed,
        runtime,
        strategy_params,
    )
    task = build_task(config)
    spec = task.model
    primary = spec.objective.primary
    splits = [hold_out(d, HOLDOUT) for d in task.devices]
    train, held = _pooled([s[0] for s in splits]), _pooled([s[1] for s in splits])

    started = time.monotonic()
    central, central_values = _central(spec, train, held, example["train"], central_epochs)
    central_wall_s = time.monotonic() - started
    central_model = make_trainer(spec, "lean")
    central_model.load(central_values)
    # Each device's own held-out windows: how much of the federated model's error per
    # device is the device's data (hard for any model), not its participation.
    central_by_device = [central_model.evaluate(s[1]).metrics[primary] for s in splits]
    out: dict[str, Any] = {
        "task": example["task"],
        "objective": spec.objective.name,
        "metric": primary,
        "devices": DEVICES,
        "holdout": HOLDOUT,
        "runtime": runtime,
        "stragglers": stragglers,
        "weakest_fraction": weakest,
        "strategy_params": config.strategy_params,
        "train_windows": len(train),
        "held_out_windows": len(held),
        "train": asdict(example["train"]),
        "central_epochs": central_epochs,
        "central_held_out": central,
        "central_held_out_by_device": central_by_device,
        "central_wall_s": central_wall_s,
    }
    test: list[Dataset] = []
    if "test_logs" in example:
        test_dir = work / name / "test"
        _make_logs(name, test_dir, example["test_logs"], seed + 1)
        module = importlib.import_module("pump_task")
        test = [module.windows(test_dir / f"pump-{i}", label="anomaly") for i in range(DEVICES)]
        out["central_test"] = _anomaly_test(spec, central_values, test, [s[1] for s in splits])
    if not sim:
        sys.path.remove(str(folder))
        return out

    started = time.monotonic()
    store = ReleaseStore.for_objective(work / name / "releases", spec.objective)
    report = simulate(config, task=task, releases=store, progress=_progress(name))
    sim_wall_s = time.monotonic() - started
    assert store.best is not None
    assert store.last is not None
    best, last = store.load(store.best), store.load(store.last)
    federated_model = make_trainer(spec, "lean")
    federated_model.load(best.tensors)
    federated = federated_model.evaluate(held).metrics
    # Each device's own held-out windows: a device that seldom trains (a heavy straggler)
    # shows here, where the pooled measure only grows.
    by_device = [federated_model.evaluate(s[1]).metrics[primary] for s in splits]
    # The last model needs no measure at all to be chosen: reported beside the best by the
    # fleet's measure, which compares reports of different devices on different versions.
    federated_model.load(last.tensors)
    federated_last = federated_model.evaluate(held).metrics
    out |= {
        "sim_virtual_time_s": report["end_time_s"],
        "sim_versions": report["versions"],
        "sim_updates_accepted": report["updates_accepted"],
        "sim_accepted_by_device": report["accepted_by_device"],
        "sim_rejected": report["rejected"],
        "sim_all_within_budget": report["all_within_budget"],
        "sim_excluded_devices": report["excluded_devices"],
        "sim_devices_trained": report["devices_trained"],
        "sim_wall_s": sim_wall_s,
        "federated_best_version": best.version,
        "federated_fleet_measure": best.metrics,
        "federated_held_out": federated,
        "federated_held_out_by_device": by_device,
        "relative_gap": (federated[primary] - central[primary]) / central[primary],
        "federated_last_version": last.version,
        "federated_last_held_out": federated_last,
        "relative_gap_last": (federated_last[primary] - central[primary]) / central[primary],
    }
    if test:
        out["federated_test"] = _anomaly_test(spec, best.tensors, test, [s[1] for s in splits])
        out["federated_last_test"] = _anomaly_test(spec, last.tensors, test, [s[1] for s in splits])
    sys.path.remove(str(folder))
    return out


def main() -> None:
    """Run both examples and write the measurements as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/bench-objectives.json"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=sorted(EXAMPLES), default=None)
    parser.add_argument("--central-epochs", type=int, default=40)
    parser.add_argument("--central-only", action="store_true", help="no simulated run")
    parser.add_argument(
        "--runtime", choices=RUNTIMES, default=REFERENCE, help="the simulated devices' runtime"
    )
    parser.add_argument(
        "--stragglers", type=float, default=FleetSpec.stragglers, help="share of stragglers"
    )
    parser.add_argument(
        "--weakest",
        type=float,
        default=WEAKEST,
        help="smallest memory budget, a fraction of whole-model training (1: no slices)",
    )
    parser.add_argument(
        "--staleness-exponent", type=float, default=None, help="a in (1 + age)^-a (strategy's)"
    )
    parser.add_argument(
        "--variance-coef", type=float, default=None, help="b of the variance penalty (strategy's)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in [args.only] if args.only else list(EXAMPLES):
            results[name] = run_example(
                name,
                Path(tmp),
                args.seed,
                args.central_epochs,
                sim=not args.central_only,
                runtime=args.runtime,
                stragglers=args.stragglers,
                weakest=args.weakest,
                strategy_params={
                    name: value
                    for name, value in (
                        ("staleness_exponent", args.staleness_exponent),
                        ("variance_coef", args.variance_coef),
                    )
                    if value is not None
                },
            )
            print(json.dumps({name: results[name]}, indent=1), flush=True)
    args.out.write_text(json.dumps({"seed": args.seed, "examples": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
