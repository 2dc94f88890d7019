"""Bounded influence: what one update can do to the global model, whatever it claims.

Applied by every strategy to the updates it is about to aggregate (``InfluenceBound.apply``)
and used for the per-tensor combination (``InfluenceBound.combine``), so FTTE, FedBuff,
FedAvg and FedAsync share one policy:

- **One row per device**: a device's several updates in one batch are folded into one
  (asynchronous aggregation otherwise gives a fast device a say in proportion to its speed).
- **Sample counts** are capped at ``sample_factor`` × the median over devices of their latest
  count, and never above ``max_samples``: a device claiming 2**53 samples weighs at most a
  few honest devices.
- **Deltas are clipped in norm per tensor** to ``clip_factor`` × the median over devices of
  their latest norm of that tensor: norm bounding (Sun et al., "Can You Really Backdoor
  Federated Learning?", arXiv:1911.07963) with a median-based adaptive bound, as adaptive
  clipping (Andrew et al., "Differentially Private Learning with Adaptive Clipping", NeurIPS
  2021, arXiv:1905.03871) tracks a quantile of the observed norms; we take the median over
  devices rather than their online quantile estimate, so the bound needs no learning rate
  and a minority of devices cannot move it. A tensor trained by few devices can have a
  hostile majority among them, so each tensor's RMS change is also capped at
  ``clip_factor`` × the median over all devices of their latest whole-delta RMS (one value
  per device, so f hostile devices of N move it only when f ≥ N/2), and never above
  ``max_delta_rms``.
- **Equal say over time** (optional, ``equal_say_window``): one row per device bounds a
  device's say in one aggregation, not how many it joins. A device that joins aggregations
  more often than the fleet's mean rate (a moving average over the window) has its delta
  scaled down to that rate, so a fast device counts like an average one over time. It
  costs honest fast devices their lead, so it is off by default; docs/security.md has the
  measured trade-off.
- **Direction screening** (optional, ``screen``): clipping bounds how far an update pushes,
  not which way, so a flipped delta clipped to the bound still pulls the model back by a
  bounded step every aggregation it joins (a fast device joins nearly all; with FTTE's
  slices an early tensor has one or two holders per aggregation, so that pull outweighs
  theirs). Each tensor of an update is compared with a reference direction: the
  coordinate-wise median over the *other* devices of their latest delta of that tensor, each
  scaled to unit norm (one vote per device, whatever its size or speed; Yin et al., below).
  An update's score is its tensors' cosines with their references weighted by their sizes
  (each judged parameter value one vote, as in FLTrust's cosine over the whole update, while
  each tensor is still scaled on its own); a device's trust is its moving average score over
  about its last ``screen_window`` judged updates; while it is below ``min_cosine`` its
  updates are left out of the aggregation. This is FLTrust's ReLU-cosine trust score (Cao et
  al., "FLTrust: Byzantine-robust Federated Learning via Trust Bootstrapping", NDSS 2021,
  arXiv:2012.13995) with two changes of ours: the reference comes from the fleet's own
  history by the median instead of from a root dataset on the server, which the field rarely
  has, and the score is averaged over a device's recent updates before it gates them,
  because one honest update's cosine with the median of non-IID devices is noisy. Small
  tensors (biases) are the noisiest: measured on ftte with three hostile devices, the honest
  cosines of the 10-value output bias were below 0 more often than not, those of the large
  weight matrices one time in six (docs/security.md), so a mean with one vote per tensor
  left out 22 % of honest updates and let 6 % of hostile ones in, while a flipped device's
  size-weighted mean is reliably negative. The reference spans devices across aggregations,
  not just the batch, so it has a voice for every device that trained the tensor recently,
  and a tensor is judged only when at least ``screen_min_voters`` other devices have a
  latest delta of it (fewer cannot outvote a hostile one). It holds while fewer than half of
  those devices are hostile. Its state is each device's latest delta direction of each
  tensor it trains, O(devices × model values), kept only when on, and one trust value per
  device.
- **An optional robust rule per tensor** replaces the weighted mean by a coordinate-wise
  median or trimmed mean of the holders' deltas, scaled by the sum of the weights the
  strategy gave them (Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal
  Statistical Rates", ICML 2018, arXiv:1803.01498).

The medians are over devices, one value each (its latest, raw and unclipped): they do not
move while fewer than half of the devices holding a tensor are hostile, however fast the
hostile ones are. The state is one count, one RMS and one join rate per device and one norm
per (device, tensor) it trains: O(devices × tensors), never O(updates).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import numpy as np

from orchestrator.latest_median import LatestMedian
from orchestrator.strategies.base import ReceivedUpdate


class RobustRule(Enum):
    """How the holders' deltas of one tensor are combined."""

    MEAN = "mean"  # the strategy's own weighted mean
    MEDIAN = "median"  # coordinate-wise median
    TRIMMED_MEAN = "trimmed_mean"  # coordinate-wise mean without the extremes


@dataclass(frozen=True)
class InfluenceSettings:
    """The bounds on one update's influence (part of ``[server]`` in ``job.toml``)."""

    sample_factor: float = 2.0  # samples capped at this × the median recent count
    max_samples: int = 100_000  # and never above this
    clip_factor: float = 3.0  # per-tensor delta norm capped at this × the median norm
    max_delta_rms: float = 1.0  # and never a root-mean-square change above this
    robust_rule: RobustRule = RobustRule.MEAN
    trim_fraction: float = 0.2  # of the holders dropped at each end by the trimmed mean
    # Aggregations over which a device's rate of joining them is averaged; a device joining
    # more often than the fleet's mean rate has its delta scaled down to it. 0: off.
    equal_say_window: int = 0
    # Direction screening: leave out the updates of a device whose mean cosine with the
    # coordinate-wise median of the other devices' latest unit deltas (per tensor, where at
    # least screen_min_voters others have one) is below min_cosine.
    screen: bool = False
    min_cosine: float = 0.0
    screen_min_voters: int = 3
    screen_window: int = 20  # judged updates a device's trust is averaged over

    def __post_init__(self) -> None:
        if not self.sample_factor >= 1:
            raise ValueError("sample_factor must be >= 1 (× the median sample count)")
        if self.max_samples < 1:
            raise ValueError("max_samples must be at least 1")
        if not self.clip_factor >= 1:
            raise ValueError("clip_factor must be >= 1 (× the median delta norm)")
        if not self.max_delta_rms > 0:
            raise ValueError("max_delta_rms must be positive")
        if not 0 <= self.trim_fraction < 0.5:
            raise ValueError("trim_fraction must be in [0, 0.5)")
        if self.equal_say_window < 0:
            raise ValueError("equal_say_window must be >= 0 aggregations (0: off)")
        if not -1 <= self.min_cosine < 1:
            raise ValueError("min_cosine must be in [-1, 1) (0: refuse opposing directions)")
        if self.screen_min_voters < 1:
            raise ValueError("screen_min_voters must be at least 1 other device")
        if self.screen_window < 1:
            raise ValueError("screen_window must be at least 1 judged update")


@dataclass(frozen=True)
class Bounded:
    """The updates to aggregate, bounded, and which of them were cut down."""

    updates: list[ReceivedUpdate]
    clipped: frozenset[str]  # update ids with at least one tensor clipped
    capped: frozenset[str]  # update ids whose sample count was capped
    merged: frozenset[str]  # update ids folded into a newer one of the same device
    screened: frozenset[str] = frozenset()  # update ids left out by the direction screen


class InfluenceBound:
    """Caps sample counts and delta norms against recent honest-majority statistics."""

    def __init__(self, settings: InfluenceSettings) -> None:
        self.settings = settings
        # Per device, its latest value: a device's say in a median is one value, however
        # many updates it sends (a fast device sends far more than a straggler).
        self._samples = LatestMedian()
        self._norms: dict[str, LatestMedian] = {}  # tensor -> device -> latest norm
        self._rms = LatestMedian()  # device -> RMS of its latest whole delta
        # Equal say: per device its rate of joining aggregations (a moving average) as of
        # the aggregation it last joined, decayed on use, so each costs O(its batch).
        self._aggregations = 0
        self._joins: dict[str, tuple[float, int]] = {}
        self._join_sum = 0.0  # Σ over devices of their join rate now
        # Screen: tensor -> device -> its latest bounded delta of it, flat, at unit norm.
        self._directions: dict[str, dict[str, np.ndarray]] = {}
        self._trust: dict[str, tuple[float, int]] = {}  # device -> (mean cosine, judged)

    def apply(self, batch: Sequence[ReceivedUpdate]) -> Bounded:
        """One update per device, each bounded, for a batch about to be aggregated; learn
        from the batch."""
        s = self.settings
        batch, merged = _one_per_device(batch)
        devices = [r.update.device_id for r in batch]
        # The medians are over the devices' latest values, the batch's being the latest:
        # the batch is learnt first.
        for d, r in zip(devices, batch, strict=True):
            self._samples.set(d, float(r.update.num_samples))
        sample_cap = min(float(s.max_samples), s.sample_factor * self._samples.median())
        squares = [{n: _square_sum(d) for n, d in r.update.delta.items()} for r in batch]
        norms = [{n: math.sqrt(q) for n, q in sq.items()} for sq in squares]
        for device_id, update_norms in zip(devices, norms, strict=True):
            for name, norm in update_norms.items():
                window = self._norms.get(name)
                if window is None:
                    window = self._norms[name] = LatestMedian()
                window.set(device_id, norm)
        tensor_caps = {
            name: s.clip_factor * self._norms[name].median()
            for name in {name for n in norms for name in n}
        }
        # A tensor that only hostile devices hold has a hostile median norm; the fleet's
        # median RMS over whole deltas, one value per device, still bounds it.
        for d, r, sq in zip(devices, batch, squares, strict=True):
            self._rms.set(d, _rms(sq, r.update.delta))
        rms_cap = min(s.max_delta_rms, s.clip_factor * self._rms.median())
        bounded, clipped, capped = [], set(), set()
        for r, update_norms in zip(batch, norms, strict=True):
            update = r.update
            delta = dict(update.delta)
            for name, norm in update_norms.items():
                limit = min(tensor_caps[name], rms_cap * math.sqrt(delta[name].size))
                if norm > limit:
                    delta[name] = (delta[name] * (limit / norm)).astype(np.float32)
                    clipped.add(update.update_id)
            say = self._say(update.device_id)
            if say < 1.0:
                delta = {n: (d * say).astype(np.float32) for n, d in delta.items()}
            samples = update.num_samples
            if samples > sample_cap:
                samples = max(1, math.floor(sample_cap))
                capped.add(update.update_id)
            cut = say < 1.0 or update.update_id in clipped or samples != update.num_samples
            if cut:
                r = replace(r, update=replace(update, delta=delta, num_samples=samples))
            bounded.append(r)
        screened: set[str] = set()
        if s.screen:
            bounded, screened = self._screen(bounded)
        self._join(devices)
        return Bounded(bounded, frozenset(clipped), frozenset(capped), merged, frozenset(screened))

    def _screen(self, batch: list[ReceivedUpdate]) -> tuple[list[ReceivedUpdate], set[str]]:
        """Drop the updates of devices whose deltas point, on average over their recent
        tensors, away from the other devices' median direction. Learns the batch's
        directions first, so devices in the same batch vote on each other."""
        s = self.settings
        for r in batch:
            for name, d in r.update.delta.items():
                flat = d.astype(np.float64).ravel()
                norm = float(np.linalg.norm(flat))
                unit = flat / norm if norm > 0 else flat
                self._directions.setdefault(name, {})[r.update.device_id] = unit.astype(np.float32)
        kept: list[ReceivedUpdate] = []
        screened: set[str] = set()
        for r in batch:
            me = r.update.device_id
            agreement, values = 0.0, 0
            for name in r.update.delta:
                others = [v for dev, v in self._directions[name].items() if dev != me]
                if len(others) >= s.screen_min_voters:
                    mine = self._directions[name][me]
                    reference = np.median(np.stack(others), axis=0)
                    agreement += mine.size * _cosine(mine, reference)
                    values += mine.size
            if values:  # one score per update: its tensors' cosines, one vote per value
                self._agree(me, agreement / values)
            if self._trust.get(me, (1.0, 0))[0] < s.min_cosine:
                screened.add(r.update.update_id)
            else:
                kept.append(r)
        return kept, screened

    def _agree(self, device: str, cosine: float) -> None:
        """Fold one judged update's score into the device's trust: a running mean of its
        scores over its first ``screen_window`` judged updates, then a moving average that
        gives each new score the weight ``1 / screen_window``."""
        trust, judged = self._trust.get(device, (0.0, 0))
        judged += 1
        trust += (cosine - trust) / min(judged, self.settings.screen_window)
        self._trust[device] = (trust, judged)

    def sample_cap(self) -> float:
        """The cap on one device's sample count now: ``sample_factor`` × the median of the
        devices' latest counts (after ``apply``, the cap it used), at most ``max_samples``."""
        s = self.settings
        if not len(self._samples):
            return float(s.max_samples)
        return min(float(s.max_samples), s.sample_factor * self._samples.median())

    def _say(self, device: str) -> float:
        """The factor on a device's delta: the fleet's mean join rate over its own, at most 1."""
        window = self.settings.equal_say_window
        if not window or device not in self._joins:
            return 1.0
        beta = 1.0 / window
        rate, at = self._joins[device]
        rate *= (1 - beta) ** (self._aggregations - at)
        fair = self._join_sum / len(self._joins)
        return min(1.0, fair / rate) if rate > 0 else 1.0

    def _join(self, devices: list[str]) -> None:
        """Count one aggregation joined by ``devices`` in the moving averages."""
        window = self.settings.equal_say_window
        if not window:
            return
        beta = 1.0 / window
        self._aggregations += 1
        self._join_sum = self._join_sum * (1 - beta) + beta * len(devices)
        for d in devices:
            rate, at = self._joins.get(d, (0.0, self._aggregations))
            self._joins[d] = (
                rate * (1 - beta) ** (self._aggregations - at) + beta,
                self._aggregations,
            )

    def stack(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        """One tensor's flat deltas (of equal sizes) as the matrix ``combine`` takes: float64
        for the weighted mean, whose product computes in float64 anyway (the cast made once,
        and shared with the strategy's float64 statistics of the rows), float32 for the
        robust rules, whose median and trimmed mean are float32's."""
        robust = self.settings.robust_rule is not RobustRule.MEAN and len(rows) >= 3
        # One concatenation of the flat rows: np.stack adds a Python step per row.
        flat = np.concatenate(rows, dtype=np.float32 if robust else np.float64)
        return flat.reshape(len(rows), rows[0].size)

    def combine(self, stacked: np.ndarray, coefs: np.ndarray) -> np.ndarray:
        """One tensor's step from its holders' deltas (rows) and their weights.

        The mean rule is ``coefs @ stacked``; the robust rules take the coordinate-wise
        median or trimmed mean of the rows and scale it by ``coefs.sum()``, the step the
        weighted mean would take if the holders agreed.
        """
        rule = self.settings.robust_rule
        if rule is RobustRule.MEAN or len(stacked) < 3:
            return coefs @ stacked
        if rule is RobustRule.MEDIAN:
            center = np.median(stacked, axis=0)
        else:
            cut = int(self.settings.trim_fraction * len(stacked))
            kept = np.sort(stacked, axis=0)[cut : len(stacked) - cut]
            center = kept.mean(axis=0)
        return float(coefs.sum()) * center

    def state_dict(self) -> dict[str, Any]:
        """The windows, so bounds after a restart are those before it."""
        return {
            "samples": dict(self._samples.latest),
            "norms": {n: dict(v.latest) for n, v in self._norms.items()},
            "rms": dict(self._rms.latest),
            "aggregations": self._aggregations,
            "joins": {d: [rate, at] for d, (rate, at) in self._joins.items()},
            "join_sum": self._join_sum,
            "directions": {n: dict(v) for n, v in self._directions.items()},
            "trust": {d: [trust, judged] for d, (trust, judged) in self._trust.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict``."""
        self._samples = LatestMedian({d: float(v) for d, v in state["samples"].items()})
        self._norms = {
            name: LatestMedian({d: float(v) for d, v in values.items()})
            for name, values in state["norms"].items()
        }
        self._rms = LatestMedian({d: float(v) for d, v in state["rms"].items()})
        self._aggregations = int(state["aggregations"])
        self._joins = {d: (float(rate), int(at)) for d, (rate, at) in state["joins"].items()}
        self._join_sum = float(state["join_sum"])
        self._directions = {
            name: {d: np.asarray(v, dtype=np.float32) for d, v in values.items()}
            for name, values in state["directions"].items()
        }
        self._trust = {d: (float(t), int(j)) for d, (t, j) in state["trust"].items()}


def _one_per_device(
    batch: Sequence[ReceivedUpdate],
) -> tuple[list[ReceivedUpdate], frozenset[str]]:
    """Fold each device's updates in the batch into its newest: mean delta per tensor.

    In asynchronous aggregation a fast device sends several updates while a straggler sends
    one, so its share of a buffer grows with its speed: measured with 20 simulated devices,
    one hostile device among the two fast ones held the buffer and took FTTE to chance
    (docs/security.md). One row per device bounds a device's say in an aggregation to one
    update's, whatever its speed; the fold keeps the oldest base (largest age) and the
    largest sample count of its updates.
    """
    groups: dict[str, list[ReceivedUpdate]] = {}
    for r in batch:
        groups.setdefault(r.update.device_id, []).append(r)
    folded: list[ReceivedUpdate] = []
    merged: set[str] = set()
    for group in groups.values():
        newest = group[-1]
        if len(group) == 1:
            folded.append(newest)
            continue
        merged.update(r.update.update_id for r in group[:-1])
        names = {n for r in group for n in r.update.delta}
        delta = {
            n: np.mean([r.update.delta[n] for r in group if n in r.update.delta], axis=0).astype(
                np.float32
            )
            for n in names
        }
        update = replace(
            newest.update,
            delta=delta,
            num_samples=max(r.update.num_samples for r in group),
        )
        folded.append(ReceivedUpdate(update, max(r.age for r in group)))
    return folded, frozenset(merged)


def _square_sum(delta: np.ndarray) -> float:
    """Σ x² of one tensor; float64: a finite float32 delta of 3e38 has a finite norm only in
    double precision. One pass, shared by the tensor's norm and the whole delta's RMS."""
    flat = delta.astype(np.float64).ravel()
    return float(flat @ flat)


def _rms(squares: dict[str, float], delta: dict[str, np.ndarray]) -> float:
    """Root-mean-square over every value of a (sliced) delta from its tensors' Σ x²."""
    return math.sqrt(sum(squares.values()) / max(1, sum(d.size for d in delta.values())))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two flat vectors; 0 when either is zero (no direction to agree with)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = float(np.linalg.norm(a64) * np.linalg.norm(b64))
    return float(a64 @ b64) / norms if norms > 0 else 0.0
