"""The lean runtime's optimizers: ``torch.optim``'s SGD and Adam rules in numpy.

Each follows the single-tensor code path torch runs on CPU (float32 arrays, the bias
corrections in Python floats), so the two runtimes give the same delta within float32
rounding (tests/unit/test_lean_runtime.py).
An optimizer is made per assignment and dropped with it (``ftte.training``: the state lives
for one assignment).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ftte.training import ADAM_BETAS, ADAM_EPS, Optimizer, TrainSettings

Array = np.ndarray[Any, Any]


class LeanSGD:
    """``torch.optim.SGD`` without weight decay: a momentum buffer when momentum is above 0."""

    def __init__(self, lr: float, momentum: float) -> None:
        self.lr = np.float32(lr)
        self.momentum = momentum
        self.velocity: dict[str, Array] = {}

    def step(self, work: dict[str, Array], grads: dict[str, Array]) -> None:
        """Move each tensor of ``work`` against its gradient in ``grads``."""
        for name, g in grads.items():
            if self.momentum > 0:
                if name in self.velocity:
                    self.velocity[name] *= np.float32(self.momentum)
                    self.velocity[name] += g
                else:
                    self.velocity[name] = g.copy()
                g = self.velocity[name]
            work[name] -= self.lr * g


class LeanAdam:
    """``torch.optim.Adam`` (Kingma and Ba, arXiv:1412.6980) with ``ADAM_BETAS`` and
    ``ADAM_EPS``, no weight decay, no AMSGrad."""

    def __init__(self, lr: float) -> None:
        self.lr = lr
        self.steps = 0
        self.first: dict[str, Array] = {}  # torch's exp_avg
        self.second: dict[str, Array] = {}  # torch's exp_avg_sq

    def step(self, work: dict[str, Array], grads: dict[str, Array]) -> None:
        """One Adam step of every tensor of ``work`` with its gradient in ``grads``."""
        beta1, beta2 = ADAM_BETAS
        self.steps += 1
        # Python floats, as torch computes them for CPU tensors.
        step_size = self.lr / (1 - beta1**self.steps)
        correction2_sqrt = math.sqrt(1 - beta2**self.steps)
        for name, g in grads.items():
            m = self.first.setdefault(name, np.zeros_like(g))
            v = self.second.setdefault(name, np.zeros_like(g))
            # One scratch array per tensor: the step's only transient, as torch's denom.
            scratch = np.subtract(g, m)
            scratch *= np.float32(1 - beta1)
            m += scratch  # torch's exp_avg.lerp_(grad, 1 - beta1)
            np.multiply(g, np.float32(1 - beta2), out=scratch)
            scratch *= g
            v *= np.float32(beta2)
            v += scratch  # torch's exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
            np.sqrt(v, out=scratch)
            scratch /= np.float32(correction2_sqrt)
            scratch += np.float32(ADAM_EPS)
            np.divide(m, scratch, out=scratch)
            scratch *= np.float32(step_size)
            work[name] -= scratch


def make_optimizer(settings: TrainSettings) -> LeanSGD | LeanAdam:
    """A fresh optimizer for one assignment's training under ``settings``."""
    if settings.optimizer is Optimizer.ADAM:
        return LeanAdam(settings.lr)
    return LeanSGD(settings.lr, settings.momentum)
