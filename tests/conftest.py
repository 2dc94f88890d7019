"""Shared pytest configuration: fixtures for real services live in tests/fixtures/."""

import torch

pytest_plugins = ["tests.fixtures.mosquitto", "tests.fixtures.victoria"]

# As the CLI does: one intra-op thread, so test processes and agent processes do not make
# OpenMP workers fight over the two cores.
torch.set_num_threads(1)
