"""Evaluation and checkpoint cadence: every N versions or T seconds, whichever comes first."""

import pytest

from orchestrator.cadence import Cadence
from orchestrator.config import JobSection


def test_runs_after_n_versions_even_when_no_time_has_passed():
    cadence = Cadence(every_versions=3, every_s=3600.0, last_version=0, last_time=0.0)
    done = []
    for version in range(1, 8):
        if cadence.due(version, 0.0):
            cadence.ran(version, 0.0)
            done.append(version)
    assert done == [3, 6]


def test_runs_after_t_seconds_on_the_first_new_version():
    cadence = Cadence(every_versions=1000, every_s=1.0, last_version=5, last_time=10.0)
    assert not cadence.due(6, 10.9)
    assert cadence.due(6, 11.0)
    cadence.ran(6, 11.0)
    assert not cadence.due(6, 50.0)  # nothing new to do: the version was done


def test_zero_seconds_is_every_version():
    cadence = Cadence(every_versions=1000, every_s=0.0, last_version=0, last_time=5.0)
    assert cadence.due(1, 5.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [("evaluate_every", 0), ("checkpoint_every", 0), ("evaluate_every_s", -1.0)],
)
def test_a_bad_cadence_is_refused_naming_the_field(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"job.{field} "):
        JobSection("job", "fleet", tmp_path, **{field: value})
