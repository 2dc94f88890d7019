"""At a tight budget the planner's slice trains to higher accuracy than the last layers that fit.

The comparison starts from a model the fleet has already trained a little (one epoch on
other devices' data): from a random initialisation no slice of the last layers can learn
(the frozen features carry no signal), which says nothing about the choice of slice.
"""

import numpy as np
import torch

from edge_agent.trainer import train_slice
from ftte.memory import MemoryModel
from ftte.tasks import load_task
from ftte.tasks.base import Dataset
from ftte.wire.messages import TrainConfig
from orchestrator.planner import BudgetTooSmall, SlicePlanner
from orchestrator.scoring import gradient_scores


def pooled(devices) -> Dataset:
    return Dataset(np.concatenate([d.x for d in devices]), np.concatenate([d.y for d in devices]))


def apply(model, delta) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in delta:
                p += torch.from_numpy(delta[name])


def accuracy(model, data: Dataset) -> float:
    with torch.no_grad():
        logits = model(torch.from_numpy(data.x))
    return float((logits.argmax(1) == torch.from_numpy(data.y)).float().mean())


def test_planner_beats_last_layers_that_fit_at_a_tight_budget():
    task = load_task("digits", num_devices=20, seed=0)
    torch.manual_seed(0)
    start = task.model.make_model()
    names = [n for n, _ in start.named_parameters()]
    warm = train_slice(start, names, pooled(task.devices[10:]), TrainConfig(epochs=1), seed=0)
    apply(start, warm.delta)
    state = {k: v.clone() for k, v in start.state_dict().items()}
    planner = SlicePlanner(
        MemoryModel.profile(start, task.model.input_shape), 32, optimizer_slots=0
    )
    scores = gradient_scores(start, task.validation, task.objective)
    full = planner.full().predicted_peak_bytes
    low = planner.minimum_bytes() / full
    for fraction in np.geomspace(low, 0.5, 40):  # the tightest budget where they differ
        budget = int(fraction * full)
        try:
            ours, heuristic = planner.plan(budget, scores), planner.last_layers_that_fit(budget)
        except BudgetTooSmall:
            continue
        if ours.trainable != heuristic.trainable:
            break
    else:
        raise AssertionError("planner and heuristic never differ")
    assert max(ours.predicted_peak_bytes, heuristic.predicted_peak_bytes) <= budget
    local = pooled(task.devices[:10])

    def trained_accuracy(trainable, seed) -> float:
        model = task.model.make_model()
        model.load_state_dict(state)
        result = train_slice(model, trainable, local, TrainConfig(epochs=2), seed=seed)
        apply(model, result.delta)
        return accuracy(model, task.validation)

    ours_acc = np.mean([trained_accuracy(ours.trainable, s) for s in range(3)])
    heur_acc = np.mean([trained_accuracy(heuristic.trainable, s) for s in range(3)])
    assert ours_acc > heur_acc, (fraction, ours.trainable, ours_acc, heuristic.trainable, heur_acc)
