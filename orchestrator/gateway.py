"""Pre-aggregation at a site gateway: a site's device updates, bounded and summed into one.

A site gateway (``[[sites]]`` in ``fleet.toml``) is a Mosquitto on the site bridged to the
central broker. The combiner here consumes the site's device updates on the site broker,
decodes each with the one codec (every device message is hostile: a refused one is
counted by reason and dropped, never stops the gateway), bounds each device's influence
and sums the updates of each base version into one ``CombinedUpdate``: FTTE's per-tensor
step Σ s(age_i) · n_i · Δ_ip / Σ n_i is additive over devices, and updates trained from
the same base version share their age, hence their staleness weight. The orchestrator
applies a combined update as one row of its buffer that counts as its members do.

Trust: the gateway is operator-run, like the orchestrator. Its broker account can answer
only for its own site's devices (the central ACL), and the orchestrator checks every
member against its open assignment and every tensor's weight against the members' slices
(``TrainingServer.admit_combined``), so a gateway cannot invent devices, replay answers or
misstate weights; it can misstate the sums, exactly as a device can misstate its delta.
So the per-device influence bounds are applied here, where the devices' deltas are still
apart: ``InfluenceBound.apply`` (orchestrator.influence, the very policy the orchestrator
applies to a flat fleet), with its medians taken over the site's devices and its settings
those of the job (``[influence]`` in the gateway config mirrors the job's ``[server]``).

One device must not cost its site the work of the others. The orchestrator applies a
combined update whole or not at all (its sums do not split), so the gateway combines only
updates it can vouch for: those answering the open assignment it saw the orchestrator send
that device (it reads the site's assignments and last wills), from that assignment's base
version and on exactly its slice, within the job's assignment timeout. Anything else (an
assignment the gateway did not see, one the device's last will or a newer assignment ended,
a forged id, a second answer) goes up alone, as a combined update of one member, so the
orchestrator refuses it and only it; the device gets its verdict as a flat device would.

Clock-free, like the engine: the gateway process and the simulator hand it bytes and the
time. It flushes when it holds ``max_updates`` (G) updates or ``max_wait_s`` (T) after the
first one arrived, whichever comes first.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ftte.errors import Rejected, RejectReason
from ftte.wire import WireLimits, decode_update
from ftte.wire.messages import Assignment, CombinedUpdate, SiteMember, Update
from orchestrator.influence import InfluenceBound, InfluenceSettings
from orchestrator.model_shapes import check_model_shapes
from orchestrator.strategies.base import ReceivedUpdate


@dataclass(frozen=True)
class FlushPolicy:
    """When a gateway sends what it holds up (``[flush]`` in the gateway config).

    An update waits at most T, and its device gets no new assignment meanwhile. Measured
    (docs/benchmarks.md, "Site gateways"): T at a quarter of the devices' median round trip
    kept the accuracy within 1 point of the flat fleet's (−0.6), a whole round trip lost
    3.9. The default 10 s is that quarter of a 40 s round trip (the field's are tens of
    seconds to minutes; the simulated digits fleet's 2 s needs T = 0.5 s). G = 16 is our
    choice, not measured: it bounds a combined update's members far below the wire's 256.
    """

    max_updates: int = 16  # G: flush when this many updates are held
    max_wait_s: float = 10.0  # T: or this long after the first held one arrived

    def __post_init__(self) -> None:
        # The wire bounds a combined update's members by the msgpack container limit.
        if not 1 <= self.max_updates <= WireLimits().max_tensors:
            raise ValueError(f"flush.max_updates must be in [1, {WireLimits().max_tensors}]")
        if not self.max_wait_s > 0:
            raise ValueError("flush.max_wait_s must be positive (seconds)")


@dataclass(frozen=True)
class _Open:
    """An assignment the gateway saw the orchestrator send one of its devices."""

    assignment_id: str
    version: int
    trainable: frozenset[str]
    seen_at: float

    def answered_by(self, update: Update) -> bool:
        """Whether ``update`` is this assignment's answer as the orchestrator will check it."""
        return (
            update.assignment_id == self.assignment_id
            and update.base_version == self.version
            and set(update.delta) == self.trainable
        )


# A vouched update goes up alone once its assignment is this close to the orchestrator's
# timeout (the flush window on top): the gateway's clock started when the assignment
# reached it, after the orchestrator's did.
TIMEOUT_MARGIN_S = 5.0


class SiteCombiner:
    """Holds a site's decoded device updates and sums them, per base version, on flush."""

    def __init__(
        self,
        site: str,
        shapes: Mapping[str, tuple[int, ...]],
        policy: FlushPolicy | None = None,
        influence: InfluenceSettings | None = None,
        limits: WireLimits | None = None,
        run_tag: str | None = None,
        assignment_timeout_s: float = 600.0,
    ) -> None:
        self.site = site
        self.shapes = dict(shapes)
        self.policy = policy or FlushPolicy()
        self.assignment_timeout_s = assignment_timeout_s
        self.limits = limits or WireLimits()
        # Equal say is a rate over the orchestrator's aggregations, which a gateway never
        # sees: the per-update bounds only.
        settings = influence or InfluenceSettings()
        if settings.equal_say_window:
            raise ValueError("influence.equal_say_window is applied by the orchestrator: set 0")
        self.bound = InfluenceBound(settings)
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        self._held: list[Update] = []
        self._first_at: float | None = None
        self._open: dict[str, _Open] = {}  # per device, the assignment it has not answered
        self._vouched: dict[str, _Open] = {}  # per held update's device, what it answers
        self.alone = 0  # updates sent up alone: not vouched for
        # The update each device had combined last: a resend (its acknowledgement lost)
        # is dropped here instead of making the orchestrator refuse a whole combined one.
        self._combined: dict[str, str] = {}
        self._tag = run_tag or f"{secrets.randbits(32):08x}"
        self._next = 1

    def add(self, device_id: str, payload: bytes, now: float) -> RejectReason | None:
        """Decode and hold one device's payload; the reason if it is refused (counted)."""
        try:
            update = decode_update(payload, self.limits)
            self._check(device_id, update)
        except Rejected as exc:
            self.rejected[exc.reason.value] += 1
            return exc.reason
        if not self._held:
            self._first_at = now
        self._held.append(update)
        opened = self._open.get(device_id)
        if opened is not None and opened.answered_by(update):
            self._vouched[device_id] = self._open.pop(device_id)
        self.accepted += 1
        return None

    def assigned(self, assignment: Assignment, now: float) -> None:
        """The orchestrator sent one of the site's devices an assignment (seen at ``now``).

        It can only have done so once the device's previous one was closed, so an update
        held for that one, not yet sent up, will be refused: it goes up alone.
        """
        self._vouched.pop(assignment.device_id, None)
        trainable = frozenset(assignment.trainable)
        self._open[assignment.device_id] = _Open(
            assignment.assignment_id, assignment.version, trainable, now
        )

    def offline(self, device_id: str) -> None:
        """The device's last will: the orchestrator drops its open assignment on it."""
        self._open.pop(device_id, None)
        self._vouched.pop(device_id, None)

    def _check(self, device_id: str, update: Update) -> None:
        if update.device_id != device_id:
            raise Rejected(RejectReason.UNKNOWN_DEVICE, f"{device_id} sent {update.device_id}'s")
        if not update.delta:
            raise Rejected(RejectReason.WRONG_SLICE, "the delta holds no tensor")
        if update.buffers:
            # Running statistics are values, not steps; they would need their own sums.
            raise Rejected(RejectReason.MALFORMED, "a gateway combines no batch-norm buffers")
        check_model_shapes(update, self.shapes, {})
        if self._combined.get(device_id) == update.update_id:
            raise Rejected(RejectReason.DUPLICATE, f"update {update.update_id!r} combined")
        for held in self._held:
            if held.device_id == device_id:
                same = held.update_id == update.update_id
                reason = RejectReason.DUPLICATE if same else RejectReason.UNEXPECTED
                raise Rejected(reason, f"{device_id} already has update {held.update_id!r} held")

    def held(self) -> int:
        """Updates waiting for the next flush."""
        return len(self._held)

    def due_at(self) -> float | None:
        """When the held updates must go up at the latest (None: nothing held)."""
        return None if self._first_at is None else self._first_at + self.policy.max_wait_s

    def due(self, now: float) -> bool:
        """Whether the held updates should go up now (G held, or T since the first)."""
        due_at = self.due_at()
        return due_at is not None and (len(self._held) >= self.policy.max_updates or now >= due_at)

    def flush(self, now: float) -> list[CombinedUpdate]:
        """The held updates, bounded and summed: one combined update per base version of
        those the gateway vouches for, and one of its own for each of the others."""
        groups: dict[int, list[Update]] = {}
        alone = []
        late = now + self.policy.max_wait_s + TIMEOUT_MARGIN_S - self.assignment_timeout_s
        for update in self._held:
            opened = self._vouched.pop(update.device_id, None)
            if opened is not None and opened.seen_at > late:
                groups.setdefault(update.base_version, []).append(update)
            else:
                alone.append(update)
        self._held, self._first_at = [], None
        self.alone += len(alone)
        combined = [self._combine(base, group) for base, group in sorted(groups.items())]
        return combined + [self._combine(u.base_version, [u]) for u in alone]

    def _combine(self, base_version: int, group: list[Update]) -> CombinedUpdate:
        # Ages are the orchestrator's to know: 0 here, unused by the bounds.
        bounded = self.bound.apply([ReceivedUpdate(u, 0) for u in group]).updates
        sums: dict[str, np.ndarray] = {}
        weights: dict[str, int] = {}
        members = []
        loss = 0.0
        for r in bounded:
            u = r.update
            n = u.num_samples
            members.append(SiteMember(u.device_id, u.assignment_id, u.update_id, n))
            loss += n * u.loss
            for name, delta in u.delta.items():
                term = n * delta.astype(np.float64)
                sums[name] = sums[name] + term if name in sums else term
                weights[name] = weights.get(name, 0) + n
            self._combined[u.device_id] = u.update_id
        total = sum(m.num_samples for m in members)
        combined_id = f"{self.site}.{self._tag}.{self._next}"
        self._next += 1
        return CombinedUpdate(
            site=self.site,
            combined_id=combined_id,
            base_version=base_version,
            members=tuple(members),
            sums={n: s.astype(np.float32) for n, s in sums.items()},
            weights=weights,
            loss=loss / total,
        )
