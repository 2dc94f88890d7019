"""The slice planner: fits the budget, maximises score, refuses impossible budgets."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from ftte.memory import MemoryModel
from ftte.training import Optimizer, TrainSettings
from orchestrator.planner import BUDGET_CLASS_RATIO, BudgetTooSmall, SlicePlanner, budget_class


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    )


@pytest.fixture(scope="module")
def planner() -> SlicePlanner:
    memory = MemoryModel.profile(small_cnn(), (1, 8, 8))
    return SlicePlanner(memory, batch_size=16, optimizer_slots=1)


def random_scores(planner: SlicePlanner, rng: np.random.Generator) -> dict[str, float]:
    return {n: float(rng.exponential()) for n in planner.memory.order}


def test_plan_fits_budget_for_100_random_budgets(planner):
    rng = np.random.default_rng(0)
    low, high = planner.minimum_bytes(), planner.full().predicted_peak_bytes
    for _ in range(100):
        budget = int(rng.uniform(low, high * 1.1))
        plan = planner.plan(budget, random_scores(planner, rng))
        assert plan.predicted_peak_bytes <= budget
        assert planner.peak(plan.trainable, plan.micro_batch) == plan.predicted_peak_bytes


def test_plan_is_optimal_against_brute_force(planner):
    rng = np.random.default_rng(1)
    names = planner.memory.order
    for _ in range(5):
        scores = random_scores(planner, rng)
        budget = int(rng.uniform(planner.minimum_bytes(), planner.full().predicted_peak_bytes))
        best = 0.0
        for r in range(1, len(names) + 1):
            for subset in itertools.combinations(names, r):
                if min(planner.peak(subset, m) for m in planner.micro_batches()) <= budget:
                    best = max(best, sum(scores[n] for n in subset))
        plan = planner.plan(budget, scores)
        # The knapsack grid rounds costs up, so it may give up a sliver of optimality.
        assert plan.score >= 0.97 * best


def test_generous_budget_trains_every_tensor(planner):
    scores = dict.fromkeys(planner.memory.order, 1.0)
    plan = planner.plan(planner.full().predicted_peak_bytes, scores)
    assert set(plan.trainable) == set(planner.memory.order)


def test_adams_two_moments_leave_a_smaller_slice_than_sgd_in_the_same_budget(planner):
    memory = planner.memory
    sgd = SlicePlanner(memory, 16, TrainSettings().optimizer_slots)
    adam = SlicePlanner(memory, 16, TrainSettings(optimizer=Optimizer.ADAM).optimizer_slots)
    scores = dict.fromkeys(memory.order, 1.0)
    # The least that holds the whole model under SGD, at its smallest micro-batch.
    budget = min(sgd.peak(memory.order, micro) for micro in sgd.micro_batches())
    with_sgd, with_adam = sgd.plan(budget, scores), adam.plan(budget, scores)

    def values(plan):
        return sum(memory.tensors[n].numel for n in plan.trainable)

    assert set(with_sgd.trainable) == set(memory.order)
    assert values(with_adam) < values(with_sgd)
    assert with_adam.predicted_peak_bytes <= budget


def test_budget_below_smallest_slice_is_a_clear_error(planner):
    scores = dict.fromkeys(planner.memory.order, 1.0)
    with pytest.raises(BudgetTooSmall, match="memory_budget_bytes"):
        planner.plan(planner.minimum_bytes() - 1, scores)


def test_smallest_budget_gets_a_bias_only_slice(planner):
    scores = dict.fromkeys(planner.memory.order, 1.0)
    plan = planner.plan(planner.minimum_bytes(), scores)
    assert all(n.endswith("bias") for n in plan.trainable)


def test_scores_must_cover_every_tensor(planner):
    with pytest.raises(ValueError, match="no contribution score"):
        planner.plan(10**9, {"0.weight": 1.0})


def test_last_layers_heuristic_takes_whole_layers_from_the_output(planner):
    plan = planner.last_layers_that_fit(planner.peak(["6.weight", "6.bias", "8.weight", "8.bias"]))
    assert plan.trainable == ("6.weight", "6.bias", "8.weight", "8.bias")


def test_micro_batches_let_a_mid_budget_train_every_tensor(planner):
    scores = dict.fromkeys(planner.memory.order, 1.0)
    everything = planner.memory.order
    at_quarter = planner.peak(everything, planner.batch_size // 4)
    assert at_quarter < planner.full().predicted_peak_bytes
    plan = planner.plan(at_quarter, scores)
    assert set(plan.trainable) == set(everything)
    assert 0 < plan.micro_batch <= planner.batch_size // 4
    # With room for the whole batch, no accumulation.
    assert planner.plan(planner.full().predicted_peak_bytes, scores).micro_batch == 0


def test_a_budget_class_floor_is_at_most_the_budget_and_within_one_class_of_it():
    budgets = np.random.default_rng(0).integers(1, 10**9, size=2000).tolist()
    budgets += [int(BUDGET_CLASS_RATIO**k) for k in range(1, 2000, 7)]  # class boundaries
    for budget in budgets:
        floor = budget_class(budget)
        assert floor <= budget < (floor + 1) * BUDGET_CLASS_RATIO
        assert budget_class(floor) == floor


def test_a_cover_reaches_every_tensor_the_budget_can_hold_each_slice_within_it(planner):
    # Size scores, as without validation data: the best slice alone would keep the
    # device's data off the tensors outside it for the whole job.
    sizes = {n: float(planner.memory.tensors[n].numel) for n in planner.memory.order}
    rng = np.random.default_rng(3)
    low, high = planner.minimum_bytes(), planner.full().predicted_peak_bytes
    rotated = 0
    for _ in range(40):
        budget = int(rng.uniform(low, high))
        cover = planner.cover(budget, sizes)
        assert cover[0] == planner.plan(budget, sizes)
        seen: set[str] = set()
        for plan in cover:
            assert planner.peak(plan.trainable, plan.micro_batch) <= budget
            assert not seen.issuperset(plan.trainable)  # each adds a tensor
            seen.update(plan.trainable)
        holdable = {
            n
            for n in planner.memory.order
            if min(planner.peak((n,), m) for m in planner.micro_batches()) <= budget
        }
        assert seen == holdable
        rotated += len(cover) > 1
    assert rotated > 0  # budgets below the whole model: some need more than one slice
