"""A local fleet on the user's own data files and port (`ftte demo --data … --port …`)."""

import tomllib
from pathlib import Path

import numpy as np
import pytest

from broker.launcher import free_port
from orchestrator.localfleet import LocalFleet, LocalFleetSpec


def test_each_device_trains_on_its_own_file_behind_the_chosen_port(tmp_path):
    files = []
    for i in range(2):
        files.append(tmp_path / f"site-{i}.npz")
        np.savez(files[-1], x=np.zeros((4, 1, 8, 8), np.float32), y=np.arange(4))
    port = free_port()
    fleet = LocalFleet(
        LocalFleetSpec(tmp_path / "run", devices=2, port=port, data_files=tuple(files))
    )
    assert fleet.fleet.fleet.broker_port == port
    paths = []
    for config in fleet.files.device_configs.values():
        with config.open("rb") as f:
            agent = tomllib.load(f)
        assert agent["broker"]["port"] == port
        paths.append(agent["data"]["path"])
    assert sorted(paths) == sorted(str(f.resolve()) for f in files)
    assert not (tmp_path / "run" / "data").exists()  # no task partitions written


@pytest.mark.parametrize(
    ("devices", "names", "message"),
    [(3, ["a.npz"], "1 data files for 3 devices"), (1, ["missing.npz"], "not found")],
)
def test_data_files_that_do_not_fit_the_fleet_are_named(tmp_path, devices, names, message):
    (tmp_path / "a.npz").write_bytes(b"")
    with pytest.raises(ValueError, match=message):
        LocalFleetSpec(tmp_path, devices=devices, data_files=tuple(tmp_path / n for n in names))


def test_a_relative_run_folder_gives_every_agent_a_path_it_can_open(tmp_path, monkeypatch):
    # `ftte demo` defaults to runs/demo-…: each agent resolves a relative path from its own
    # config's folder (the broker's devices/), where the partition files are not.
    monkeypatch.chdir(tmp_path)
    fleet = LocalFleet(LocalFleetSpec(Path("runs/demo"), devices=2, port=free_port()))
    for config in fleet.files.device_configs.values():
        with config.open("rb") as f:
            agent = tomllib.load(f)
        data = Path(agent["data"]["path"])
        assert data.is_absolute() and data.is_file(), data
