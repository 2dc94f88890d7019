"""Aggregation strategies, one class per file, chosen by name."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from orchestrator.strategies.base import Strategy
from orchestrator.strategies.fedasync import FedAsyncStrategy
from orchestrator.strategies.fedavg import FedAvgStrategy
from orchestrator.strategies.fedbuff import FedBuffStrategy
from orchestrator.strategies.ftte import FTTEStrategy

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (FTTEStrategy, FedBuffStrategy, FedAvgStrategy, FedAsyncStrategy)
}


def strategy_parameters(name: str) -> dict[str, Any]:
    """The parameters strategy ``name`` takes, with their defaults (its one home)."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}") from None
    return {
        p.name: p.default
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self"
    }


def make_strategy(name: str, params: Mapping[str, Any]) -> Strategy:
    """Instantiate the strategy called ``name``; an unknown parameter or a bad value is
    refused with the ``strategy.<param>`` field it came from and what the strategy takes."""
    known = strategy_parameters(name)
    for key, value in params.items():
        if key not in known:
            raise ValueError(
                f"strategy.{key}: {name} takes no such parameter; it takes "
                + ", ".join(f"{k} (default {v!r})" for k, v in known.items())
            )
        default = known[key]
        # Every parameter is a number (None: no limit, which TOML cannot write anyway).
        numeric = default is None or not isinstance(default, bool | str)
        if (
            value is not None
            and numeric
            and (isinstance(value, bool) or not isinstance(value, int | float))
        ):
            raise ValueError(f"strategy.{key}: expected a number, got {value!r}")
    try:
        return STRATEGIES[name](**params)
    except ValueError as exc:
        raise ValueError(f"strategy ({name}): {exc}") from None
