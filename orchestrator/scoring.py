"""Contribution scores: how much training each tensor is expected to help, per byte spent.

A score is the squared gradient norm of the task objective's loss for the tensor on the
server's validation data, summed over a few batches. For one SGD step of size lr on a set of
tensors, the first-order loss decrease is lr · Σ ||g_t||², so scores add up across tensors
exactly as the planner's knapsack objective assumes. The orchestrator recomputes them on the
current global model every ``rescore_every`` versions, so the slices follow where learning
is happening.
This stands in for Lin et al.'s contribution analysis (which fine-tunes each layer to
measure accuracy gain): the same ranking signal at the cost of one backward pass.

Without a validation set on the orchestrator (the field's usual case: devices measure the
model on their own data) there is no data to take gradients on, and each tensor scores its
number of values (``size_scores``): the planner then gives a device the slice with the
most trainable values its budget holds.
"""

from __future__ import annotations

import torch
from torch import nn

from ftte.tasks.base import Dataset
from ftte.tasks.objectives import Objective


def gradient_scores(
    model: nn.Sequential,
    data: Dataset,
    objective: Objective,
    batch_size: int = 64,
    max_samples: int = 512,
) -> dict[str, float]:
    """Squared gradient norm of ``objective``'s mean loss per parameter tensor, on up to
    ``max_samples``."""
    params = dict(model.named_parameters())
    was = {n: p.requires_grad for n, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
    scores = dict.fromkeys(params, 0.0)
    x_all = torch.from_numpy(data.x[:max_samples])
    y_all = torch.from_numpy(objective.targets(data)[:max_samples])
    try:
        for start in range(0, len(y_all), batch_size):
            model.zero_grad(set_to_none=True)
            x, y = x_all[start : start + batch_size], y_all[start : start + batch_size]
            (objective.torch_loss_sum(model(x), y) / len(x)).backward()
            for n, p in params.items():
                if p.grad is not None:
                    scores[n] += float(p.grad.pow(2).sum())
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in params.items():
            p.requires_grad_(was[n])
    return scores


def size_scores(model: nn.Sequential) -> dict[str, float]:
    """Each parameter tensor's number of values: the scores without validation data."""
    return {n: float(p.numel()) for n, p in model.named_parameters()}
