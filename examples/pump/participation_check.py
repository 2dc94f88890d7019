"""Diagnostic: is the simulated pump's error the fleet's uneven participation?

Runs the pump example's simulated job (examples/bench_objectives.py's settings: 5 devices,
the FTTE preset with K = 5, Adam lr 0.003, 10 local steps, 5,000 accepted updates, the
lean runtime) and prints, as JSON, how many updates the server accepted from each device,
the tensors each device trains, and the last model's held-out MSE, pooled and on each
pump's own held-out windows. With

- ``--equal``: every device gets the same speed (500 MFLOP/s), links (50 KB/s up, 100
  KB/s down), latency (0.1 s) and stays online with no dropouts, so each trains about as
  often as any other (memory budgets, hence slices, are still drawn as usual). The
  simulator draws its fleet inside ``simulate``; this check replaces the drawn profiles
  there, which is why it patches ``ftte.sim.run.make_fleet``;
- ``--whole``: every device's budget holds the whole model (no slices).

Used to test whether fast devices filling the buffer is why the simulated autoencoder
stays far above the synchronous rounds of ``drift_check.py`` (docs/benchmarks.md,
objectives).

    python examples/pump/participation_check.py --equal --out equal.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_objectives as bench  # noqa: E402  (the examples folder, put on the path above)

import ftte.sim.run as sim_run  # noqa: E402
from edge_agent.runtime import make_trainer  # noqa: E402
from ftte.sim.fleet import DeviceProfile, FleetSpec, make_fleet  # noqa: E402
from ftte.tasks.base import hold_out  # noqa: E402


def _equal_profiles(spec: FleetSpec, full_bytes: int, seed: int) -> list[DeviceProfile]:
    """The drawn fleet with every device's speed, links and latency made the same."""
    drawn = make_fleet(spec, full_bytes, seed)
    return [
        dataclasses.replace(
            p,
            flops_per_s=5e8,
            up_bytes_per_s=50e3,
            down_bytes_per_s=100e3,
            latency_s=0.1,
            straggler=False,
        )
        for p in drawn
    ]


def run(seed: int, equal: bool, whole: bool) -> dict[str, Any]:
    """One simulated pump job; participation and the last model's held-out MSE."""
    example = bench.EXAMPLES["pump"]
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp) / "logs"
        bench._make_logs("pump", logs, example["make_logs"], seed)
        os.environ[example["logs_env"]] = str(logs)
        fleet = FleetSpec(devices=bench.DEVICES, weakest_fraction=1.0 if whole else bench.WEAKEST)
        if equal:
            fleet = dataclasses.replace(fleet, mean_online_s=1e9, mean_work_s_to_dropout=None)
        config = bench.sim_config("pump", fleet, seed, "lean")
        task = sim_run.build_task(config)
        splits = [hold_out(d, bench.HOLDOUT) for d in task.devices]
        servers: list[Any] = []
        make_server = sim_run.make_server

        def keep(*args: Any, **kwargs: Any) -> Any:
            servers.append(make_server(*args, **kwargs))
            return servers[-1]

        fleet_of = _equal_profiles if equal else make_fleet
        with (
            mock.patch.object(sim_run, "make_server", keep),
            mock.patch.object(sim_run, "make_fleet", fleet_of),
        ):
            report = sim_run.simulate(config, task=task)
        model = make_trainer(task.model, "lean")
        model.load({n: v.copy() for n, v in servers[0].model_state().items()})
        pooled = bench._pooled([s[1] for s in splits])
        return {
            "seed": seed,
            "equal": equal,
            "whole": whole,
            "virtual_time_s": report["end_time_s"],
            "accepted_by_device": report["accepted_by_device"],
            # The slice each device was planned last (without a validation set, one of
            # its budget class's slices, which it takes in turn).
            "trainable_by_device": {
                d: list(r.plan.trainable) for d, r in servers[0].devices.items() if r.plan
            },
            "last_version": report["versions"],
            "last_held_out_mse": model.evaluate(pooled).metrics["mse"],
            "last_held_out_mse_by_device": [model.evaluate(s[1]).metrics["mse"] for s in splits],
        }


def main() -> None:
    """Run the check and print (and with ``--out`` write) its measurements."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--equal", action="store_true", help="every device equally fast")
    parser.add_argument("--whole", action="store_true", help="whole-model budgets")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = run(args.seed, args.equal, args.whole)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
