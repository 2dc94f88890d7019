"""The slice planner: which tensors a device trains, chosen to fit its memory budget.

The objective is the sum of per-tensor contribution scores (see ``orchestrator.scoring``);
the constraint is the memory model's predicted peak. The activation term is not additive
in the usual knapsack sense: the earliest trainable layer decides how much of the network
must keep activations for backward. So the planner enumerates that first layer and the
tensor that anchors it, and solves an exact 0/1 knapsack over the tensors behind it, in the
spirit of the sparse-update search of Lin et al., "On-Device Training Under 256KB Memory"
(NeurIPS 2022), which also keeps nothing below the deepest updated layer.

The search also chooses the micro-batch: gradient accumulation over chunks of the batch
divides what activations cost, so a device that cannot train the early layers at the full
batch often can at a quarter of it, with the same update. Among equally scored slices the
largest micro-batch wins (fewer, larger kernels are faster on the device).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np

from ftte.memory import FLOAT_BYTES, MemoryModel

KNAPSACK_CELLS = 2048  # budget resolution; item costs round up, so a plan never exceeds it
MICRO_BATCH_DIVISORS = (1, 2, 4, 8)  # micro-batches tried: the batch, its half, ...
# Budgets are planned in classes 1 % apart: every device of a class trains the slice planned
# for the class's floor, at most 1 % below its own budget. A fleet draws budgets from a
# continuum, so without classes every device was planned on its own after each rescore:
# at 2,000 devices that was 2,000 planner calls (34 s of a 906 s cProfiled run); a class
# grid bounds them at ~210 over the 12-100 % budget range, whatever the fleet size.
BUDGET_CLASS_RATIO = 1.01


class PlanMode(StrEnum):
    """How slices are assigned across the fleet."""

    PER_DEVICE = "per-device"  # ftte: each device's own budget
    WEAKEST = "weakest"  # the paper: one subset sized for the smallest budget
    FULL = "full"  # baselines (FedAvg, FedBuff): every tensor, whatever the budget
    # Baselines as a real fleet runs them: every tensor, and a device whose budget cannot
    # hold the whole model does not train (it is excluded, as under ``BudgetTooSmall``).
    FULL_IN_BUDGET = "full-in-budget"


class BudgetTooSmall(ValueError):
    """Even the cheapest useful slice does not fit the device's budget."""


@dataclass(frozen=True)
class SlicePlan:
    """A slice and what the memory model predicts it needs."""

    trainable: tuple[str, ...]
    predicted_peak_bytes: int
    score: float
    micro_batch: int = 0  # gradient accumulation chunk; 0: the whole batch at once


def budget_class(budget_bytes: int) -> int:
    """The floor of ``budget_bytes``'s planning class: the largest int(1.01^k) at or below
    it (so a floor is its own class)."""
    if budget_bytes < 1:
        return budget_bytes
    k = math.floor(math.log(budget_bytes, BUDGET_CLASS_RATIO))
    # math.log may round either way at a class boundary: settle on the exact integer test.
    if int(BUDGET_CLASS_RATIO ** (k + 1)) <= budget_bytes:
        k += 1
    while int(BUDGET_CLASS_RATIO**k) > budget_bytes:
        k -= 1
    return int(BUDGET_CLASS_RATIO**k)


class SlicePlanner:
    """Plans the trainable tensors for a memory budget under the memory model."""

    def __init__(self, memory: MemoryModel, batch_size: int, optimizer_slots: int) -> None:
        self.memory = memory
        self.batch_size = batch_size
        self.optimizer_slots = optimizer_slots  # per trained value (TrainSettings')

    def peak(self, trainable: Sequence[str], micro_batch: int = 0) -> int:
        """Predicted peak bytes of training ``trainable`` with this planner's settings."""
        return self.memory.peak_bytes(trainable, self.batch_size, self.optimizer_slots, micro_batch)

    def micro_batches(self) -> list[int]:
        """Micro-batch sizes the search tries, largest first (0 stands for the whole batch)."""
        sizes = sorted({max(1, self.batch_size // d) for d in MICRO_BATCH_DIVISORS}, reverse=True)
        return [0 if m == self.batch_size else m for m in sizes]

    def minimum_bytes(self) -> int:
        """The smallest budget any slice fits in (one tensor, the cheapest, smallest chunk)."""
        smallest = self.micro_batches()[-1]
        return min(self.peak([name], smallest) for name in self.memory.order)

    def full(self) -> SlicePlan:
        """Every tensor trainable, as FedAvg and FedBuff train."""
        order = tuple(self.memory.order)
        return SlicePlan(order, self.peak(order), float("nan"))

    def full_within(self, budget_bytes: int) -> SlicePlan:
        """The whole model, if its predicted peak fits ``budget_bytes``."""
        plan = self.full()
        if plan.predicted_peak_bytes > budget_bytes:
            raise BudgetTooSmall(
                f"memory budget {budget_bytes} B cannot hold the whole model "
                f"({plan.predicted_peak_bytes} B at batch {self.batch_size}); this strategy "
                "trains only whole models"
            )
        return plan

    def plan(self, budget_bytes: int, scores: Mapping[str, float]) -> SlicePlan:
        """The slice with the largest total score whose predicted peak fits ``budget_bytes``,
        at the largest micro-batch that reaches that score."""
        self._check_scores(scores)
        best: tuple[float, int, int, tuple[str, ...]] | None = None
        for micro in self.micro_batches():
            found = self._best_slice(budget_bytes, scores, micro)
            if found is None:
                continue
            value, peak, names = found
            # Larger micro-batches come first, so only a strictly better score replaces one.
            if best is None or value > best[0]:
                best = (value, micro, peak, names)
        if best is None:
            raise BudgetTooSmall(
                f"memory budget {budget_bytes} B cannot hold the smallest slice "
                f"({self.minimum_bytes()} B at micro-batch {self.micro_batches()[-1]}); raise "
                "the device's memory_budget_bytes or lower the job's batch_size"
            )
        value, micro, peak, names = best
        return SlicePlan(names, peak, value, micro)

    def cover(self, budget_bytes: int, scores: Mapping[str, float]) -> list[SlicePlan]:
        """Slices for a device to train in turn, so that its data reaches every tensor some
        slice within ``budget_bytes`` can hold: the best slice first, then each next best
        with the tensors already covered scored as filler only, until one adds nothing."""
        plans = [self.plan(budget_bytes, scores)]
        covered = set(plans[0].trainable)
        # Filler weights sum below the smallest positive score: any uncovered tensor that
        # fits outweighs every covered one together.
        positive = [v for v in scores.values() if v > 0]
        filler = min(positive, default=1.0) / (2.0 * sum(positive) + 1.0)
        while len(covered) < len(self.memory.order):
            discounted = {n: v * filler if n in covered else v for n, v in scores.items()}
            plan = self.plan(budget_bytes, discounted)
            if covered.issuperset(plan.trainable):
                break
            plans.append(replace(plan, score=sum(scores[n] for n in plan.trainable)))
            covered.update(plan.trainable)
        return plans

    def _best_slice(
        self, budget_bytes: int, scores: Mapping[str, float], micro: int
    ) -> tuple[float, int, tuple[str, ...]] | None:
        """Best (score, peak, names) at one micro-batch, or None if nothing fits."""
        mem = self.memory
        best: tuple[float, int, tuple[str, ...]] | None = None
        for anchor_name in mem.order:
            anchor = mem.tensors[anchor_name]
            # Tensors after the anchor's layer, and its layer-mates that cost no more
            # activation than the anchor (so the anchor stays the cheapest in its layer).
            candidates = [
                t.name
                for t in mem.tensors.values()
                if t.name != anchor_name
                and (
                    t.layer > anchor.layer
                    or (
                        t.layer == anchor.layer
                        and t.first_act_per_sample >= anchor.first_act_per_sample
                    )
                )
            ]
            values = [scores[n] for n in candidates]
            variants = self._knapsack_variants(anchor_name, candidates, budget_bytes, micro)
            for costs, room in variants:
                if room < 0:
                    continue
                value, chosen = _knapsack(values, costs, room)
                picked = {anchor_name} | {candidates[i] for i in chosen}
                names = tuple(n for n in mem.order if n in picked)
                peak = self.peak(names, micro)
                if peak > budget_bytes:
                    continue
                key = (value + scores[anchor_name], -peak, names)
                if best is None or key[:2] > best[:2]:
                    best = key
        if best is None:
            return None
        total, neg_peak, names = best
        return total, -neg_peak, names

    def last_layers_that_fit(self, budget_bytes: int) -> SlicePlan:
        """Heuristic baseline: whole layers from the output backwards while they fit."""
        layers = sorted({t.layer for t in self.memory.tensors.values()}, reverse=True)
        chosen: list[str] = []
        for layer in layers:
            trial = chosen + [t.name for t in self.memory.tensors.values() if t.layer == layer]
            if self.peak(trial) > budget_bytes:
                break
            chosen = trial
        if not chosen:
            raise BudgetTooSmall(f"memory budget {budget_bytes} B cannot hold the last layer")
        names = tuple(n for n in self.memory.order if n in chosen)
        return SlicePlan(names, self.peak(names), float("nan"))

    def _knapsack_variants(
        self, anchor_name: str, candidates: list[str], budget: int, micro: int
    ) -> list[tuple[list[int], int]]:
        """Item costs and room for the knapsacks that approximate one anchor's peak.

        Peak = max(frozen phase, activations + trained transient). The first variant puts
        the anchor's activations inside the max exactly and counts the other tensors'
        extra activations on top (additive, and never understating). When the frozen
        phase dominates, a second variant lets extra activations ride in its slack at no
        cost; its result is kept only if the memory model confirms it fits.
        """
        mem, full_batch = self.memory, self.batch_size
        batch = micro or full_batch  # activations and transients are one chunk's
        anchor = mem.tensors[anchor_name]
        base = budget - mem.weight_bytes - mem.input_per_sample * full_batch
        base -= self._state_bytes(anchor_name) + mem.buffer_bytes(anchor.layer)
        frozen = mem.frozen_phase(anchor.layer, batch)
        trained = anchor.first_act_per_sample * batch + mem.trained_transient(anchor.layer, batch)
        state = [self._state_bytes(n) for n in candidates]
        with_acts = [
            s + mem.tensors[n].extra_act_per_sample * batch
            for s, n in zip(state, candidates, strict=True)
        ]
        variants = [(with_acts, base - max(frozen, trained))]
        if frozen > trained:
            variants.append((state, base - frozen))
        return variants

    def _state_bytes(self, name: str) -> int:
        # gradient + optimizer slots + starting value, per trainable element
        return self.memory.tensors[name].numel * FLOAT_BYTES * (2 + self.optimizer_slots)

    def _check_scores(self, scores: Mapping[str, float]) -> None:
        missing = set(self.memory.order) - scores.keys()
        if missing:
            raise ValueError(f"no contribution score for {sorted(missing)}")
        bad = [n for n in self.memory.order if not np.isfinite(scores[n]) or scores[n] < 0]
        if bad:
            raise ValueError(f"contribution scores must be finite and >= 0; bad: {bad}")


def _knapsack(values: list[float], costs: list[int], capacity: int) -> tuple[float, set[int]]:
    """Exact 0/1 knapsack on a grid; returns the best value and the chosen item indices."""
    if sum(costs) <= capacity:
        return sum(values), set(range(len(values)))
    unit = max(1, -(-capacity // KNAPSACK_CELLS))
    cells = capacity // unit
    best = np.zeros(cells + 1)
    picked = np.zeros((cells + 1, len(values)), dtype=bool)  # row c: items of the best set
    for i, (value, cost) in enumerate(zip(values, costs, strict=True)):
        width = -(-cost // unit)
        if width > cells:
            continue
        take = best[: cells + 1 - width] + value
        better = np.flatnonzero(take > best[width:])
        new_best, new_picked = best.copy(), picked.copy()
        new_best[better + width] = take[better]
        new_picked[better + width] = picked[better]
        new_picked[better + width, i] = True
        best, picked = new_best, new_picked
    top = int(np.argmax(best))
    return float(best[top]), {int(i) for i in np.flatnonzero(picked[top])}
