"""Discrete-event fleet simulator: a virtual clock around the real server, trainer and codec.

Only time is simulated. Each dispatched assignment is really encoded, decoded by the device,
trained with the device trainer on its data and answered with a really encoded update, and
the server aggregates what arrives. Time comes from the compute model (the slice's work over
the device's speed) and the encoded byte sizes over the device's links, so a smaller slice or
a smaller payload shows up as a faster virtual clock, never as an assumed constant.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from edge_agent.runtime import REFERENCE
from ftte.compute import ComputeModel
from ftte.sim.attacks import Attack, corrupt
from ftte.sim.devices import FleetModels
from ftte.sim.fleet import DeviceProfile, FleetSpec
from ftte.tasks.base import hold_out
from ftte.wire import decode_assignment, encode_assignment, encode_update
from ftte.wire.codec import encode_combined
from orchestrator.gateway import SiteCombiner
from orchestrator.server import TrainingServer


@dataclass(frozen=True)
class CurvePoint:
    """The global model after one aggregation: its metrics on the task's validation set,
    or without one the fleet's newest measure (devices' held-out data), and ``value``, the
    objective's primary metric among them (NaN before the fleet has measured)."""

    time_s: float
    version: int
    value: float
    metrics: dict[str, float]
    updates: int


@dataclass
class SimResult:
    """Everything a run measured."""

    curve: list[CurvePoint] = field(default_factory=list)
    time_to_target_s: float | None = None
    bytes_up: list[int] = field(default_factory=list)  # per update a device sent
    # Per message that crossed to the central broker: a device's update, or a site
    # gateway's combined update (its devices' own updates stay on the site).
    bytes_central: list[int] = field(default_factory=list)
    bytes_down: list[int] = field(default_factory=list)  # per assignment sent
    peak_mem_bytes: dict[str, int] = field(default_factory=dict)  # device -> largest measured
    # Device -> its updates the server accepted directly (not through a site gateway): how
    # evenly asynchronous aggregation hears the fleet.
    accepted_by_device: dict[str, int] = field(default_factory=dict)
    arrivals: list[tuple[float, float]] = field(default_factory=list)  # (dispatched, arrived)
    dropouts: int = 0
    end_time_s: float = 0.0

    @property
    def final_value(self) -> float:
        """The primary metric of the last model version (NaN before any was measured)."""
        return self.curve[-1].value if self.curve else float("nan")


@dataclass(order=True)
class _Event:
    time: float
    seq: int
    kind: str = field(compare=False)
    device_id: str = field(compare=False)
    payload: bytes = field(compare=False, default=b"")
    token: int = field(compare=False, default=0)
    started: float = field(compare=False, default=0.0)


ProgressFn = Callable[[CurvePoint], None]


class FleetSimulator:
    """Runs one strategy's server against a simulated fleet under a virtual clock."""

    def __init__(
        self,
        server: TrainingServer,
        profiles: list[DeviceProfile],
        spec: FleetSpec,
        seed: int,
        hostile: Mapping[str, Attack] | None = None,
        holdout: float = 0.0,
        fleet_min_devices: int = 1,
        runtime: str = REFERENCE,
        gateways: Mapping[str, tuple[SiteCombiner, list[str]]] | None = None,
    ) -> None:
        """``holdout``: the share of each device's data it keeps out of training to measure
        each model it is sent on (federated evaluation), as an agent's ``[data] holdout``;
        ``runtime``: what the devices train with (``edge_agent.runtime``); ``gateways``: per
        site, its combiner and devices; their updates go through it (the devices' own link
        times are unchanged, the gateway's uplink adds none)."""
        if len(profiles) > len(server.task.devices):
            raise ValueError("the task has fewer device partitions than the fleet has devices")
        self.server = server
        self.profiles = {p.device_id: p for p in profiles}
        self.data, self.held_out = {}, {}
        for i, p in enumerate(profiles):
            self.data[p.device_id], self.held_out[p.device_id] = hold_out(
                server.task.devices[i], holdout
            )
        if server.task.validation is None and holdout <= 0:
            raise ValueError(
                f"task {server.task.name!r} has no validation set: hold out a share of each "
                "device's data (e.g. holdout 0.2) so the fleet measures the model"
            )
        self.objective = server.task.objective
        self.fleet_min_devices = fleet_min_devices
        self.spec = spec
        self.hostile = dict(hostile or {})
        self.rng = np.random.default_rng(seed)
        self.compute = ComputeModel.profile(
            server.task.model.make_model(), server.task.model.input_shape
        )
        self.models = FleetModels(server.task.model, runtime)
        self._queue: list[_Event] = []
        self._seq = itertools.count()
        # The simulated devices' own work in progress (device -> token of the arrival it
        # will send); a device that goes offline loses it. The server keeps its own view.
        self._working: dict[str, int] = {}
        self._availability: dict[str, int] = {}  # device -> token of its live on/off chain
        self._tokens = itertools.count(1)
        self.now = 0.0
        self.result = SimResult()
        self.gateways = {site: combiner for site, (combiner, _) in (gateways or {}).items()}
        self.site_of = {d: site for site, (_, ds) in (gateways or {}).items() for d in ds}
        for site, (_, devices) in (gateways or {}).items():
            server.set_site(site, devices)

    def run(
        self,
        *,
        time_limit_s: float,
        max_updates: int,
        target: float | None = None,
        min_time_s: float = 0.0,
        progress: ProgressFn | None = None,
    ) -> SimResult:
        """Advance the clock until the objective's primary metric reaches ``target`` (but at
        least ``min_time_s``), the time limit or the update limit."""
        for device_id, profile in self.profiles.items():
            online_s = self.rng.exponential(self.spec.mean_online_s)  # drawn alike either way
            if self.hostile.get(device_id) is Attack.ABSENT:
                continue  # never registers, never comes online: its data is not the fleet's
            self.server.register(device_id, profile.budget_bytes)
            self._go_offline_later(device_id, online_s)
        self._dispatch()
        while self._queue and self.server.accepted < max_updates:
            event = heapq.heappop(self._queue)
            if event.time > time_limit_s:
                break
            self.now = event.time
            point = self._handle(event)
            expired = self.server.expire_overdue(self.now)
            if expired and self.server.aggregate_if_ready() is not None:
                point = self._curve_point()
            if point is not None:
                self.result.curve.append(point)
                if progress is not None:
                    progress(point)
                reached = target is not None and self.objective.reached(point.value, target)
                if reached and self.result.time_to_target_s is None:
                    self.result.time_to_target_s = self.now
            if self.result.time_to_target_s is not None and self.now >= min_time_s:
                break
            self._dispatch()
        self.result.end_time_s = self.now
        return self.result

    def _schedule(self, delay: float, kind: str, device_id: str, **kw: object) -> None:
        event = _Event(self.now + delay, next(self._seq), kind, device_id, **kw)  # type: ignore[arg-type]
        heapq.heappush(self._queue, event)

    def _go_offline_later(self, device_id: str, delay: float) -> None:
        """Start a new on/off chain for the device; any older chain's events go stale."""
        token = next(self._tokens)
        self._availability[device_id] = token
        self._schedule(delay, "offline", device_id, token=token)

    def _handle(self, event: _Event) -> CurvePoint | None:
        device_id = event.device_id
        if event.kind == "flush":  # a site's timer; a flush since may have emptied it
            return self._flush(device_id) if self.gateways[device_id].due(self.now) else None
        live_chain = self._availability.get(device_id) == event.token
        if event.kind == "offline" and live_chain:
            if self._working.pop(device_id, None) is not None:
                self.result.dropouts += 1
            report = self.server.set_offline(device_id)
            if device_id in self.site_of:  # its last will reaches its site's gateway too
                self.gateways[self.site_of[device_id]].offline(device_id)
            delay = self.rng.exponential(self.spec.mean_offline_s)
            self._schedule(delay, "online", device_id, token=event.token)
            if report is not None:  # a synchronous round may have waited only for it
                return self._curve_point()
        elif event.kind == "online" and live_chain:
            profile = self.profiles[device_id]
            self.server.register(device_id, profile.budget_bytes, self.models.version(device_id))
            self._go_offline_later(device_id, self.rng.exponential(self.spec.mean_online_s))
        elif event.kind == "arrive" and self._working.get(event.device_id) == event.token:
            del self._working[event.device_id]
            self.result.bytes_up.append(len(event.payload))
            self.result.arrivals.append((event.started, self.now))
            return self._arrive(event)
        return None

    def _arrive(self, event: _Event) -> CurvePoint | None:
        site = self.site_of.get(event.device_id)
        if site is not None:
            return self._at_gateway(site, event)
        self.result.bytes_central.append(len(event.payload))
        outcome = self.server.ingest(event.device_id, event.payload)
        if outcome.accepted:
            counts = self.result.accepted_by_device
            counts[event.device_id] = counts.get(event.device_id, 0) + 1
        if outcome.aggregation is None:
            return None
        return self._curve_point()

    def _at_gateway(self, site: str, event: _Event) -> CurvePoint | None:
        combiner = self.gateways[site]
        first = combiner.held() == 0
        combiner.add(event.device_id, event.payload, self.now)
        if combiner.due(self.now):
            return self._flush(site)
        due_at = combiner.due_at()
        if first and due_at is not None:
            self._schedule(due_at - self.now, "flush", site)
        return None

    def _flush(self, site: str) -> CurvePoint | None:
        aggregated = False
        for combined in self.gateways[site].flush(self.now):
            payload = encode_combined(combined, self.server.config.train.delta_encoding)
            self.result.bytes_central.append(len(payload))
            aggregated |= self.server.ingest_combined(site, payload).aggregation is not None
        return self._curve_point() if aggregated else None

    def _curve_point(self) -> CurvePoint:
        metrics = self.server.evaluate()
        if self.server.task.validation is None:
            fleet = self.server.fleet_evaluation.latest(self.fleet_min_devices)
            metrics = {} if fleet is None else fleet.metrics
        value = metrics.get(self.objective.primary, float("nan"))
        return CurvePoint(self.now, self.server.version, value, metrics, self.server.accepted)

    def _dispatch(self) -> None:
        for assignment in self.server.dispatch(self.rng, self.now):
            device_id = assignment.device_id
            profile = self.profiles[device_id]
            down = encode_assignment(assignment, self.server.config.model_encoding)
            received = decode_assignment(down)
            if device_id in self.site_of:  # the site's gateway reads its devices' assignments
                self.gateways[self.site_of[device_id]].assigned(received, self.now)
            seed = int(self.rng.integers(2**31))
            update, trained = self.models.train(
                device_id,
                received,
                self.data[device_id],
                seed,
                f"{received.assignment_id}.u",
                held_out=self.held_out[device_id],
            )
            if device_id in self.hostile:
                update = corrupt(update, self.hostile[device_id])
            up = encode_update(update, received.train.delta_encoding)
            self.result.bytes_down.append(len(down))
            peaks = self.result.peak_mem_bytes
            peaks[device_id] = max(peaks.get(device_id, 0), trained.peak_mem_bytes)
            flops = self.compute.train_flops_per_sample(received.trainable)
            duration = (
                2 * profile.latency_s
                + len(down) / profile.down_bytes_per_s
                + flops * trained.samples_processed / profile.flops_per_s
                + len(up) / profile.up_bytes_per_s
            )
            token = next(self._tokens)
            self._working[device_id] = token
            mean_to_dropout = self.spec.mean_work_s_to_dropout
            if mean_to_dropout is not None:
                failure = self.rng.exponential(mean_to_dropout)
                if failure < duration:
                    self._go_offline_later(device_id, failure)
            self._schedule(duration, "arrive", device_id, payload=up, token=token, started=self.now)
