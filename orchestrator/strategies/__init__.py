"""Aggregation strategies, one class per file, chosen by name."""

from __future__ import annotations

from typing import Any

from orchestrator.strategies.base import Strategy
from orchestrator.strategies.fedasync import FedAsyncStrategy
from orchestrator.strategies.fedavg import FedAvgStrategy
from orchestrator.strategies.fedbuff import FedBuffStrategy
from orchestrator.strategies.ftte import FTTEStrategy

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (FTTEStrategy, FedBuffStrategy, FedAvgStrategy, FedAsyncStrategy)
}


def make_strategy(name: str, **params: Any) -> Strategy:
    """Instantiate the strategy called ``name`` with ``params``; errors list the options."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}") from None
    try:
        return cls(**params)
    except TypeError as exc:
        raise ValueError(f"strategy {name!r}: {exc}") from None
