"""Staleness weights: how much an update counts given its age (and, for FTTE, its variance)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class StalenessWeight(Protocol):
    """Maps an update's age (versions since its base) and variance ratio to a weight."""

    def __call__(self, age: int, variance_ratio: float) -> float:
        """The weight, in (0, 1] for age >= 0."""
        ...


def _check_age(age: int) -> None:
    if age < 0:
        raise ValueError(f"age must be >= 0, got {age}")


@dataclass(frozen=True)
class PolynomialStaleness:
    """s(age) = (1 + age)^-a, ignoring variance (FedBuff, FedAsync; a = 0.5 by default)."""

    exponent: float = 0.5

    def __post_init__(self) -> None:
        if self.exponent < 0:
            raise ValueError("exponent must be >= 0")

    def __call__(self, age: int, variance_ratio: float = 1.0) -> float:
        """(1 + age)^-a."""
        _check_age(age)
        return float((1.0 + age) ** -self.exponent)


@dataclass(frozen=True)
class AgeVarianceStaleness:
    """s(age, r) = (1 + age)^-a / (1 + b · max(0, r − 1)).

    FTTE weights an update by its age and its variance; the paper's exact formula is not
    public to us, so this is our documented form. ``r`` is the update's variance relative
    to the mean variance of the buffered updates touching the same tensor: an update no
    noisier than its peers (r <= 1) is not penalised, a noisier one is damped in proportion.
    b = 0 reduces to FedBuff-style age-only weighting. Constants are set from the benchmark
    (docs/benchmarks.md).
    """

    exponent: float = 0.5
    variance_coef: float = 0.5

    def __post_init__(self) -> None:
        if self.exponent < 0:
            raise ValueError("exponent must be >= 0")
        if self.variance_coef < 0:
            raise ValueError("variance_coef must be >= 0")

    def __call__(self, age: int, variance_ratio: float) -> float:
        """Age decay divided by the variance penalty."""
        return float(self.decay(age) / self.penalty(np.asarray(variance_ratio, np.float64)))

    def decay(self, age: int) -> float:
        """The age factor (1 + age)^-a."""
        _check_age(age)
        return float((1.0 + age) ** -self.exponent)

    def penalty(self, variance_ratios: np.ndarray) -> np.ndarray:
        """The variance penalty 1 + b · max(0, r − 1) of each ratio, elementwise: a buffer's
        weights for one tensor in one array operation (the aggregator's hot loop)."""
        return 1.0 + self.variance_coef * np.fmax(0.0, variance_ratios - 1.0)
