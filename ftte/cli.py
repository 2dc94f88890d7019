"""The ``ftte`` command line: simulate, benchmark, run the fleet, manage the broker."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.runtime import REFERENCE, RUNTIMES
from ftte.sim.fleet import FleetSpec
from ftte.training import Optimizer, TrainSettings

if TYPE_CHECKING:
    from ftte.sim.run import SimConfig
    from ftte.sim.simulator import CurvePoint
    from ftte.transport.mqtt import BrokerSettings


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ftte`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (ValueError, FileNotFoundError) as exc:
        print(f"ftte {args.command}: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """The ``ftte`` command line: every subcommand and its options."""
    parser = argparse.ArgumentParser(prog="ftte", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_sim(commands)
    _add_bench(commands)
    _add_broker(commands)
    _add_orchestrator(commands)
    _add_gateway(commands)
    _add_status(commands)
    _add_release(commands)
    _add_demo(commands)
    _add_strategies(commands)
    _add_loadgen(commands)
    return parser


def _single_threaded_torch() -> None:
    """Import torch for a command that trains or evaluates, with one intra-op thread.

    Tiny models gain nothing from intra-op threads, and OpenMP workers spinning in several
    processes on a 2-core gateway (orchestrator, agents, simulator) slow everyone 10x.
    Commands that only manage files or read the broker never import torch (a 3 s start-up
    in every Ansible run and status poll).
    """
    import torch

    torch.set_num_threads(1)


def _add_sim(commands: Any) -> None:
    p = commands.add_parser("sim", help="simulate one strategy on a virtual fleet")
    p.add_argument("--task", default="digits", help="built-in task or package.module:factory")
    p.add_argument("--strategy", default="ftte", help="a preset (see `ftte strategies`)")
    p.add_argument("--devices", type=int, default=20)
    p.add_argument("--stragglers", type=float, default=0.9, help="fraction slowed down")
    p.add_argument(
        "--weakest-fraction",
        type=float,
        default=FleetSpec.weakest_fraction,
        help="smallest memory budget, as a fraction of full-model training",
    )
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet non-IID concentration")
    p.add_argument("--samples-per-device", type=int, default=60, help="local samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--target",
        type=float,
        default=None,
        help="the objective's primary metric to reach (accuracy, or mse); default: the task's",
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=0.0,
        help="share of each device's data held out to measure the model (federated "
        "evaluation; needed by a task without a validation set)",
    )
    p.add_argument("--time-limit", type=float, default=6 * 3600.0, help="virtual seconds")
    p.add_argument("--max-updates", type=int, default=20_000)
    defaults = TrainSettings()
    p.add_argument("--lr", type=float, default=defaults.lr, help="local learning rate")
    p.add_argument("--epochs", type=int, default=defaults.epochs, help="local epochs")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument(
        "--optimizer",
        choices=[o.value for o in Optimizer],
        default=defaults.optimizer.value,
        help="local optimizer (its state lives for one assignment)",
    )
    p.add_argument("--momentum", type=float, default=defaults.momentum, help="SGD momentum")
    p.add_argument(
        "--steps",
        type=int,
        default=defaults.steps,
        help="at most this many local steps per assignment (0: every batch of every epoch)",
    )
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=REFERENCE,
        help="what the devices train with: torch, or the agents' lean numpy runtime "
        "(faster on small dense models, slower on convolutions)",
    )
    p.add_argument(
        "--buffer-size",
        type=int,
        default=None,
        help="updates per aggregation (ftte, fedbuff; default the strategy's 10): at most "
        "--devices, or each aggregation averages several updates of a device into one",
    )
    p.add_argument("--json", type=Path, default=None, help="write the measurements here")
    p.add_argument(
        "--releases", type=Path, default=None, help="keep the best and the last model here"
    )
    p.set_defaults(run=_run_sim)


def _run_sim(args: argparse.Namespace) -> int:
    _single_threaded_torch()
    from ftte.sim.run import build_task, simulate
    from orchestrator.releases import ReleaseStore

    config = sim_config(args)
    task = build_task(config)
    releases = None
    if args.releases:
        releases = ReleaseStore.for_objective(args.releases, task.objective)
    progress = _progress_line(args.strategy)
    report = simulate(config, task=task, progress=progress, releases=releases)
    print(file=sys.stderr)
    ttt = report["time_to_target_s"]
    metric = report["metric"]
    print(
        f"{args.strategy}: final {metric} {report['final_acc']:.4g} after "
        f"{report['versions']} versions; time to {metric} {report['target_accuracy']:g}: "
        + (f"{ttt:.0f} s (virtual)" if ttt is not None else "not reached")
        + f"; {report['bytes_up_per_update']:.0f} B/update up, "
        f"{report['bytes_down_per_update']:.0f} B/update down; "
        f"peak memory max {report['peak_mem_bytes_max']} B"
    )
    if args.json:
        # default=str: enums in the config (the influence bound's rule) as their names.
        text = json.dumps({"config": asdict(config), **report}, indent=1, default=str)
        args.json.write_text(text)
    if releases is not None and releases.best is not None:
        best = releases.best
        print(f"best release: version {best.version} in {args.releases / best.file}")
    return 0


def sim_config(args: argparse.Namespace) -> SimConfig:
    """The simulated run ``ftte sim``'s options describe."""
    from ftte.sim.run import SimConfig

    return SimConfig(
        task=args.task,
        strategy=args.strategy,
        fleet=FleetSpec(
            devices=args.devices,
            stragglers=args.stragglers,
            weakest_fraction=args.weakest_fraction,
        ),
        seed=args.seed,
        alpha=args.alpha,
        samples_per_device=args.samples_per_device,
        target=args.target,
        holdout=args.holdout,
        runtime=args.runtime,
        time_limit_s=args.time_limit,
        max_updates=args.max_updates,
        train=TrainSettings(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            optimizer=Optimizer(args.optimizer),
            momentum=args.momentum,
            steps=args.steps,
        ),
        strategy_params={} if args.buffer_size is None else {"buffer_size": args.buffer_size},
    )


def _add_bench(commands: Any) -> None:
    p = commands.add_parser("bench", help="benchmarks: ftte against its baselines")
    which = p.add_subparsers(dest="bench", required=True)
    paper = which.add_parser("paper", help="FTTE vs FedBuff vs FedAvg on one simulated fleet")
    paper.add_argument("--quick", action="store_true", help="50 devices, 1 seed, < 10 min")
    paper.add_argument("--task", default="digits", help="digits, vibration or highrate")
    paper.add_argument(
        "--budgets",
        choices=["fraction", "device-classes"],
        default="fraction",
        help="device budgets: fractions of full-model training memory, or Raspberry Pi RAM "
        "classes (512 MB-4 GB) minus the sensing share and the runtime (its own fleet size)",
    )
    paper.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1")
    paper.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="earlier --json of the same setting: its runs are reused, only missing seeds run",
    )
    paper.add_argument("--json", type=Path, default=Path("bench-paper.json"))
    paper.add_argument("--plots", type=Path, default=None, help="folder for PNG plots")
    paper.set_defaults(run=_run_bench_paper)
    agg = which.add_parser("aggregator", help="ingest throughput vs a raw decode+axpy loop")
    agg.add_argument("--task", default="digits", help="digits or vibration")
    agg.add_argument("--devices", type=int, default=300, help="updates per timed run")
    agg.add_argument("--repeats", type=int, default=7)
    agg.add_argument("--json", type=Path, default=Path("bench-aggregator.json"))
    agg.set_defaults(run=_run_bench_aggregator)
    state = which.add_parser("state", help="checkpoint and replay protection vs updates")
    state.add_argument("--devices", type=int, default=1000)
    state.add_argument("--updates", type=int, default=1_000_000)
    state.add_argument("--every", type=int, default=100_000, help="measure every N updates")
    state.add_argument("--json", type=Path, default=Path("bench-state.json"))
    state.set_defaults(run=_run_bench_state)
    delivery = which.add_parser(
        "delivery", help="updates finished while the orchestrator is away; persistence costs"
    )
    delivery.add_argument("--devices", type=int, default=200)
    delivery.add_argument("--per-device", type=int, default=10, help="updates each finishes")
    delivery.add_argument("--resend-after", type=float, default=5.0, help="agent resend_after_s")
    delivery.add_argument(
        "--old-queue", action="store_true", help="also run with the 1,000-message queue of before"
    )
    delivery.add_argument("--persistence", action="store_true", help="also time persistence")
    delivery.add_argument("--skip-outage", action="store_true", help="persistence part only")
    delivery.add_argument("--pdevices", type=int, default=20, help="publishers, persistence part")
    delivery.add_argument("--messages", type=int, default=2000, help="persistence part")
    delivery.add_argument("--json", type=Path, default=Path("bench-delivery.json"))
    delivery.set_defaults(run=_run_bench_delivery)
    ingest = which.add_parser("ingest", help="live orchestrator ingest vs the raw broker rate")
    ingest.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    ingest.add_argument("--duration", type=float, default=30.0, help="seconds of load per size")
    ingest.add_argument("--raw-seconds", type=float, default=10.0, help="raw broker timing")
    ingest.add_argument("--think", type=float, default=0.0, help="devices' mean think time")
    ingest.add_argument("--drain", type=float, default=60.0)
    ingest.add_argument("--seed", type=int, default=0)
    ingest.add_argument(
        "--workers", type=int, nargs="+", default=[0], help="ingest worker counts to run"
    )
    ingest.add_argument("--json", type=Path, default=Path("bench-ingest.json"))
    ingest.add_argument(
        "--profile", type=Path, default=None, help="folder for cProfile stats of each run"
    )
    ingest.set_defaults(run=_run_bench_ingest)
    gateway = which.add_parser(
        "gateway", help="site gateways pre-aggregating against the flat fleet"
    )
    gateway.add_argument("--seeds", type=int, default=3, help="seeds 0.. to run (at most 3)")
    gateway.add_argument("--json", type=Path, default=Path("bench-gateway.json"))
    gateway.set_defaults(run=_run_bench_gateway)
    attack = which.add_parser("attack", help="hostile devices' effect on the accuracy curve")
    attack.add_argument(
        "--strategies",
        nargs="+",
        choices=["ftte", "fedbuff", "fedavg"],
        default=["ftte", "fedbuff", "fedavg"],
        help="the strategies to run (default: all three)",
    )
    attack.add_argument("--json", type=Path, default=Path("bench-attack.json"))
    attack.add_argument(
        "--hostile",
        nargs="+",
        type=int,
        choices=[1, 2, 3],
        default=[1, 2, 3],
        help="the numbers of hostile devices to run (default: 1 2 3)",
    )
    attack.add_argument(
        "--without-control",
        action="store_true",
        help="skip the control runs (the hostile devices absent), when time is short",
    )
    attack.add_argument(
        "--reuse",
        type=Path,
        help="an earlier JSON of this benchmark: its runs of the same jobs are taken, not run "
        "again, if one of them rerun now gives the same accuracy",
    )
    attack.set_defaults(run=_run_bench_attack)
    batchnorm = which.add_parser(
        "batchnorm",
        help="a model with a batch norm: running statistics aggregated against dropped",
    )
    batchnorm.add_argument("--json", type=Path, default=Path("bench-batchnorm.json"))
    batchnorm.set_defaults(run=_run_bench_batchnorm)
    device = which.add_parser(
        "device", help="one agent's process RSS, CPU and bytes: ftte slice vs FedAvg, per runtime"
    )
    device.add_argument("--task", default="digits", help="digits, vibration or highrate")
    device.add_argument("--assignments", type=int, default=30, help="per runtime and preset")
    device.add_argument(
        "--ram-mib",
        type=int,
        default=None,
        help="budget of a device with this much RAM (the fleet's device classes, with the "
        "worker's measured baseline) instead of 0.12 of full-model training memory",
    )
    device.add_argument(
        "--runtimes", nargs="+", default=["lean", "torch"], choices=["lean", "torch"]
    )
    device.add_argument(
        "--flat", type=int, default=0, help="also run N lean ftte assignments: RSS growth"
    )
    device.add_argument("--json", type=Path, default=Path("bench-device.json"))
    device.set_defaults(run=_run_bench_device)
    predict = which.add_parser(
        "predict", help="serving a release on a device: lean numpy vs onnxruntime vs torch"
    )
    predict.add_argument("--tasks", nargs="+", default=["digits", "vibration"])
    predict.add_argument("--windows", type=int, default=500, help="batch-1 calls timed")
    predict.add_argument("--repeats", type=int, default=3, help="fresh processes per path")
    predict.add_argument("--json", type=Path, default=Path("bench-predict.json"))
    predict.set_defaults(run=_run_bench_predict)


def _run_bench_paper(args: argparse.Namespace) -> int:
    _single_threaded_torch()
    from ftte.bench.paper import run_paper_benchmark

    return run_paper_benchmark(args)


def _run_bench_aggregator(args: argparse.Namespace) -> int:
    _single_threaded_torch()
    from ftte.bench.aggregator import run_aggregator_benchmark

    return run_aggregator_benchmark(args)


def _run_bench_state(args: argparse.Namespace) -> int:
    _single_threaded_torch()
    from ftte.bench.state import run_state_benchmark

    return run_state_benchmark(args)


def _run_bench_delivery(args: argparse.Namespace) -> int:
    from ftte.bench.delivery import run_delivery_benchmark

    return run_delivery_benchmark(args)


def _run_bench_ingest(args: argparse.Namespace) -> int:
    from ftte.bench.ingest import run_ingest_benchmark

    return run_ingest_benchmark(args)


def _run_bench_device(args: argparse.Namespace) -> int:
    _single_threaded_torch()  # the orchestrator side; each worker picks its own runtime
    from ftte.bench.device import run_device_benchmark

    return run_device_benchmark(args)


def _run_bench_predict(args: argparse.Namespace) -> int:
    from ftte.bench.predict import run_predict_benchmark

    return run_predict_benchmark(args)


def _run_bench_batchnorm(args: argparse.Namespace) -> int:
    _single_threaded_torch()
    from ftte.bench.batchnorm import run_batchnorm_benchmark

    return run_batchnorm_benchmark(args)


def _run_bench_gateway(args: argparse.Namespace) -> int:
    _single_threaded_torch()
    from ftte.bench.gateway import run_gateway_benchmark

    return run_gateway_benchmark(args)


def _run_bench_attack(args: argparse.Namespace) -> int:
    _single_threaded_torch()
    from ftte.bench.attack import run_attack_benchmark

    return run_attack_benchmark(args)


def _add_loadgen(commands: Any) -> None:
    # No torch on this path: a load generator's process holds thousands of sessions.
    from ftte.loadgen.run import add_arguments, run_loadgen_cli

    p = commands.add_parser(
        "loadgen", help="thousands of protocol-level devices with their generated credentials"
    )
    add_arguments(p)
    p.set_defaults(run=run_loadgen_cli)


def _add_broker(commands: Any) -> None:
    p = commands.add_parser("broker", help="generate the Mosquitto config for a fleet")
    which = p.add_subparsers(dest="broker", required=True)
    init = which.add_parser("init", help="config, TLS, passwords, ACL and agent configs")
    init.add_argument("--fleet", type=Path, required=True, help="fleet inventory (TOML)")
    init.add_argument("--out", type=Path, required=True, help="output folder")
    init.add_argument(
        "--job",
        type=Path,
        default=None,
        help="job.toml: its timeout, delta encoding and [influence] go into each site "
        "gateway's gateway.toml (without it a gateway keeps what its file holds)",
    )
    init.set_defaults(run=_run_broker_init)
    wait = which.add_parser("wait-online", help="wait for a device's retained online status")
    wait.add_argument("--fleet", type=Path, required=True)
    wait.add_argument("--out", type=Path, required=True, help="folder `init` wrote")
    wait.add_argument("--device", required=True)
    wait.add_argument("--version", default=None, help="also require this software version")
    wait.add_argument("--timeout", type=float, default=120.0, help="seconds")
    wait.set_defaults(run=_run_broker_wait_online)
    rotate = which.add_parser("rotate", help="new password for one device")
    rotate.add_argument("--fleet", type=Path, required=True)
    rotate.add_argument("--out", type=Path, required=True)
    rotate.add_argument("--device", required=True)
    rotate.set_defaults(run=_run_broker_rotate)
    run = which.add_parser("run", help="run the generated config with Mosquitto on this machine")
    run.add_argument("--fleet", type=Path, required=True)
    run.add_argument("--out", type=Path, required=True, help="folder `init` wrote")
    run.add_argument("--port", type=int, default=None, help="default: fleet.broker_port")
    run.add_argument("--bind", default=None, help="default: fleet.bind_address")
    run.set_defaults(run=_run_broker_run)


def _run_broker_init(args: argparse.Namespace) -> int:
    from broker.fleet import load_fleet
    from broker.generate import init_broker

    fleet = load_fleet(args.fleet)
    gateway_job = None
    if args.job is not None and any(site.pre_aggregate for site in fleet.sites):
        from orchestrator.config import load_job_config

        gateway_job = load_job_config(args.job).gateway_tables()
    files = init_broker(fleet, args.out, gateway_job)
    print(f"broker config: {files.config}")
    print(f"agent configs: {len(files.device_configs)} in {args.out / 'devices'}")
    print(f"orchestrator credentials: {files.orchestrator_credentials}")
    print(f"operator credentials: {files.operator_credentials}")
    # Deploy tools key on this line (Ansible's changed_when): keep its wording.
    print(f"changed files: {len(files.changed)}")
    return 0


def _operator_account(out: Path) -> BrokerSettings:
    """The operator's read-only broker account from the folder `ftte broker init` wrote."""
    from orchestrator.status import load_broker_account

    path = out / "operator.toml"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: run `ftte broker init` again (broker files written before "
            "the operator account existed lack it) and restart the broker"
        )
    return load_broker_account(path)


def _run_broker_wait_online(args: argparse.Namespace) -> int:
    from broker.fleet import load_fleet
    from orchestrator.status import wait_online

    fleet = load_fleet(args.fleet).fleet.name
    account = _operator_account(args.out)
    try:
        status = wait_online(account, fleet, args.device, args.timeout, args.version)
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{status.device_id} online, version {status.software_version}")
    return 0


def _run_broker_rotate(args: argparse.Namespace) -> int:
    from broker.fleet import load_fleet
    from broker.generate import rotate_device

    path = rotate_device(load_fleet(args.fleet), args.out, args.device)
    print(f"new credentials for {args.device}: {path} (redeploy the broker and this agent)")
    return 0


def _run_broker_run(args: argparse.Namespace) -> int:
    from broker.fleet import load_fleet
    from broker.launcher import find_mosquitto, write_local_conf

    fleet = load_fleet(args.fleet)
    if not (args.out / "passwd").exists():
        print(f"error: no broker files in {args.out}: run `ftte broker init`", file=sys.stderr)
        return 1
    port = args.port or fleet.fleet.broker_port
    bind = args.bind or fleet.fleet.bind_address
    conf = write_local_conf(fleet, args.out, port, bind)
    print(f"mosquitto on {bind}:{port} with {conf} (Ctrl-C stops it)", flush=True)
    mosquitto = str(find_mosquitto())
    os.execv(mosquitto, [mosquitto, "-c", str(conf)])  # the broker takes over this process


def _add_orchestrator(commands: Any) -> None:
    p = commands.add_parser("orchestrator", help="run a training job against the fleet")
    p.add_argument("--config", type=Path, required=True, help="job file (TOML)")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(run=_run_orchestrator)


def _add_gateway(commands: Any) -> None:
    p = commands.add_parser("gateway", help="run a site's pre-aggregating gateway process")
    p.add_argument("--config", type=Path, required=True, help="gateway file (TOML)")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(run=_run_gateway)


def _run_gateway(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from orchestrator.gateway_service import GatewayService, load_gateway_config

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    service = GatewayService(load_gateway_config(args.config))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    service.run(stop)
    rejected = dict(service.combiner.rejected)
    print(f"gateway stopped: {len(service.sent_bytes)} combined updates sent, refused {rejected}")
    return 0


def _run_orchestrator(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    _single_threaded_torch()
    from orchestrator.config import load_job_config
    from orchestrator.service import OrchestratorService

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    service = OrchestratorService(load_job_config(args.config))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    result = service.run(stop)
    measured = ", ".join(f"{k} {v:.4g}" for k, v in sorted(result.metrics.items()))
    print(
        f"job ended at version {result.version}, {measured or 'not measured'}, "
        f"target {'reached' if result.reached_target else 'not reached'}, "
        f"{result.wall_time_s:.0f} s"
    )
    return 0


def _add_strategies(commands: Any) -> None:
    p = commands.add_parser("strategies", help="the presets and the [strategy] keys each takes")
    p.set_defaults(run=_run_strategies)


def _run_strategies(_args: argparse.Namespace) -> int:
    from orchestrator.presets import PRESETS
    from orchestrator.strategies import strategy_parameters

    for name, chosen in sorted(PRESETS.items()):
        print(
            f"{name}: strategy {chosen.strategy}, slices {chosen.plan_mode.value}, "
            f"deltas up {chosen.delta_encoding.value}, model down {chosen.model_encoding.value}"
        )
        for key, default in strategy_parameters(chosen.strategy).items():
            print(f"  {key} = {default!r}")
    return 0


def _add_status(commands: Any) -> None:
    p = commands.add_parser("status", help="the job's retained state from the broker")
    p.add_argument("--fleet", type=Path, required=True, help="fleet inventory (TOML)")
    p.add_argument("--out", type=Path, required=True, help="folder `broker init` wrote")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(run=_run_status)


def _run_status(args: argparse.Namespace) -> int:
    from broker.fleet import load_fleet
    from orchestrator.status import read_status

    fleet = load_fleet(args.fleet).fleet.name
    state = read_status(_operator_account(args.out), fleet, args.timeout)
    if args.json:
        print(json.dumps(state, indent=1))
        return 0
    validation = ", ".join(f"{k} {v:.4g}" for k, v in sorted(state["metrics"].items()))
    print(
        f"job {state['job']} ({state['liveness']}): version {state['version']}, "
        f"{state['objective']} ({validation or 'no validation set'}), "
        f"buffer {state['buffer_fill']}, "
        f"devices online {state['devices_online']}, accepted {state['accepted']}"
    )
    for reason, count in sorted(state["rejected"].items()):
        print(f"  rejected {reason}: {count}")
    for counter, count in sorted(state["delivery"].items()):
        print(f"  delivery {counter}: {count}")
    if state["fleet"]:
        measures = dict(state["fleet"])
        version, devices = int(measures.pop("version")), int(measures.pop("devices"))
        measured = ", ".join(f"{k} {v:.4g}" for k, v in sorted(measures.items()))
        print(f"  fleet evaluation of version {version} on {devices} devices: {measured}")
    if state["excluded"]:
        print(f"  excluded devices: {state['excluded']}")
        for device, reason in sorted(state["excluded_devices"].items()):
            print(f"    {device}: {reason}")
    return 0


def _add_release(commands: Any) -> None:
    p = commands.add_parser("release", help="a kept release as a file other tools run")
    which = p.add_subparsers(dest="release", required=True)
    export = which.add_parser("export", help="TorchScript or ONNX of a release")
    export.add_argument("--release", type=Path, required=True, help="a .release file")
    export.add_argument("--format", choices=["torchscript", "onnx"], required=True)
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--task", default=None, help="default: the release's model name")
    export.set_defaults(run=_run_release_export)


def _run_release_export(args: argparse.Namespace) -> int:
    from ftte.tasks import load_model_spec
    from ftte.wire.codec import decode_release
    from orchestrator.export import ExportFormat, export_release

    release = decode_release(args.release.read_bytes())
    spec = load_model_spec(args.task or release.model)
    out = export_release(release, spec, ExportFormat(args.format), args.out)
    print(f"{args.format} of job {release.job} version {release.version}: {out}")
    return 0


def _add_demo(commands: Any) -> None:
    p = commands.add_parser("demo", help="a local fleet: broker, orchestrator and agents")
    p.add_argument("--devices", type=int, default=20)
    p.add_argument("--task", default="digits")
    p.add_argument("--strategy", default="ftte", help="a preset (see `ftte strategies`)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/demo-…)")
    p.add_argument("--port", type=int, default=0, help="broker port on 127.0.0.1 (default: free)")
    p.add_argument(
        "--data",
        type=Path,
        nargs="+",
        default=[],
        help="one data file per device (.npz with x, y or a labelled .csv); sets --devices",
    )
    p.add_argument("--influx-url", default=None, help="InfluxDB v2 URL for telemetry")
    p.add_argument("--influx-token", default="")
    p.add_argument("--influx-org", default="ftte")
    p.add_argument("--influx-bucket", default="ftte")
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    _single_threaded_torch()
    from orchestrator.demo import run_demo

    return run_demo(args)


def _progress_line(label: str) -> Any:
    interactive = sys.stderr.isatty()

    def show(point: CurvePoint) -> None:
        measured = " ".join(f"{k} {v:.4g}" for k, v in point.metrics.items())
        line = (
            f"\r{label}: t={point.time_s:9.0f}s  version {point.version:5d}  "
            f"updates {point.updates:6d}  {measured}"
        )
        if interactive:
            print(line, end="", file=sys.stderr, flush=True)
        elif point.version % 50 == 0:
            print(line.strip(), file=sys.stderr, flush=True)

    return show


if __name__ == "__main__":
    sys.exit(main())
