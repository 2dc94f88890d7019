"""The training budget an agent announces: its whole budget minus what it holds already."""

from pathlib import Path

import pytest

from broker.fleet import DeviceEntry
from edge_agent.agent import training_budget
from edge_agent.config import AgentSection

BASELINE = 48_000_000


def section(**budgets) -> AgentSection:
    return AgentSection("pi-001", "farm-a", Path("/tmp/state"), **budgets)


def test_training_gets_the_whole_budget_minus_the_baseline():
    assert training_budget(section(memory_budget_bytes=64_000_000), BASELINE) == 16_000_000


def test_a_budget_the_baseline_already_fills_is_refused_with_the_field_and_the_fix():
    with pytest.raises(ValueError, match=r"memory_budget_bytes = 40000000 B.*48000000 B.*lean"):
        training_budget(section(memory_budget_bytes=40_000_000), BASELINE)


def test_a_lab_training_budget_is_announced_as_is():
    assert training_budget(section(training_budget_bytes=300_000), BASELINE) == 300_000


def test_whole_and_training_budgets_together_are_refused():
    with pytest.raises(ValueError, match="not both"):
        section(memory_budget_bytes=64_000_000, training_budget_bytes=300_000)


@pytest.mark.parametrize(("whole", "training"), [(0, 0), (64_000_000, 300_000), (-1, 5)])
def test_a_fleet_device_needs_exactly_one_budget(whole, training):
    with pytest.raises(ValueError, match="memory_budget_bytes"):
        DeviceEntry("pi-001", whole, training_budget_bytes=training)
