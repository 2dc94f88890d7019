"""Shared pytest configuration: fixtures for real services live in tests/fixtures/."""

import torch

pytest_plugins = ["tests.fixtures.mosquitto", "tests.fixtures.victoria"]

# As the CLI does: one intra-op thread, so test processes and agent processes do not make
# OpenMP workers fight over the two cores.
torch.set_num_threads(1)

# Heaviest files first: with two workers taking one file at a time, a long file scheduled
# last runs alone while the other worker idles. The markers are the cost classes.
COST_ORDER = ("deploy", "slow", "fleet")


def pytest_collection_modifyitems(items: list) -> None:
    """Order test files by cost class (deploy, slow, fleet, the rest), keeping file order."""
    rank: dict[str, int] = {}
    for item in items:
        marks = {m.name for m in item.iter_markers()}
        cost = min((i for i, name in enumerate(COST_ORDER) if name in marks), default=3)
        rank[item.fspath.strpath] = min(rank.get(item.fspath.strpath, 3), cost)
    items.sort(key=lambda item: rank[item.fspath.strpath])
