"""The agent's config, local data sources (sensor files, a loader, a demo partition), outbox."""

import numpy as np
import pytest

import ftte.fileio
from edge_agent.config import DataSection, load_agent_config
from edge_agent.data import load_local_data
from edge_agent.outbox import Outbox
from ftte.config import ConfigError

AGENT = """
[agent]
device_id = "pi-001"
fleet = "farm-a"
state_dir = "state"
memory_budget_bytes = 400000

[broker]
host = "gateway.local"
port = 8883
username = "pi-001"
password = "secret"
ca_file = "ca.crt"

[data]
task = "vibration"
path = "windows.npz"
"""


def test_relative_paths_resolve_next_to_the_config(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(AGENT)
    config = load_agent_config(path)
    assert config.broker.ca_file == tmp_path / "ca.crt"
    assert config.data.path == tmp_path / "windows.npz"
    assert config.agent.state_dir == tmp_path / "state"


def test_username_must_be_the_device_id(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(AGENT.replace('username = "pi-001"', 'username = "pi-002"'))
    with pytest.raises(ConfigError, match=r"broker\.username"):
        load_agent_config(path)


def test_unknown_key_names_the_field(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(AGENT.replace("[data]", "[data]\nbogus = 1"))
    with pytest.raises(ConfigError, match=r"data\.bogus"):
        load_agent_config(path)


def test_wrong_type_names_the_field(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(AGENT.replace("port = 8883", 'port = "8883"'))
    with pytest.raises(ConfigError, match=r"broker\.port.*expected int"):
        load_agent_config(path)


def test_npz_sensor_windows(tmp_path):
    x = np.random.default_rng(0).normal(size=(5, 1, 256)).astype(np.float32)
    np.savez(tmp_path / "w.npz", x=x, y=np.arange(5))
    data = load_local_data(DataSection(task="vibration", path=tmp_path / "w.npz"))
    np.testing.assert_array_equal(data.x, x)
    assert data.y.dtype == np.int64


def test_csv_rows_with_the_label_last(tmp_path):
    (tmp_path / "w.csv").write_text("0.1,0.2,0.3,1\n0.4,0.5,0.6,0\n")
    data = load_local_data(DataSection(task="vibration", path=tmp_path / "w.csv"))
    assert data.x.shape == (2, 1, 3) and list(data.y) == [1, 0]


def test_demo_partition_of_a_built_in_task():
    section = DataSection(task="digits", partition=2, num_partitions=4)
    assert len(load_local_data(section)) == 60


def test_exactly_one_data_source():
    with pytest.raises(ValueError, match="exactly one"):
        DataSection(task="digits")


def test_an_outboxed_update_survives_a_power_cut_with_its_folder_entry(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(ftte.fileio, "fsync_dir", synced.append)
    outbox = Outbox(tmp_path / "outbox")
    outbox.put("u-1", b"delta")
    assert synced == [tmp_path / "outbox"]
    assert outbox.pending() == [("u-1", b"delta")]
