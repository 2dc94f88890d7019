"""The agent's config, local data sources (sensor files, a loader, a demo partition), outbox."""

import sys
import threading
import types

import numpy as np
import pytest

import ftte.fileio
from broker.generate import init_broker
from edge_agent.agent import EdgeAgent
from edge_agent.config import DataSection, load_agent_config
from edge_agent.data import LocalData
from edge_agent.outbox import Outbox
from ftte.config import ConfigError
from ftte.tasks import MODELS, load_task
from ftte.tasks.base import Dataset
from ftte.wire import encode_assignment
from orchestrator.presets import make_server
from tests.fixtures.mosquitto import make_fleet

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


def read(section: DataSection):
    return LocalData(section, MODELS[section.task]).read()


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
    data = read(DataSection(task="vibration", path=tmp_path / "w.npz"))
    np.testing.assert_array_equal(data.x, x)
    assert data.y.dtype == np.int64


def test_csv_rows_with_the_label_last(tmp_path):
    rows = [",".join(["0.5"] * 256 + [label]) for label in ("1", "0")]
    (tmp_path / "w.csv").write_text("\n".join(rows) + "\n")
    data = read(DataSection(task="vibration", path=tmp_path / "w.csv"))
    assert data.x.shape == (2, 1, 256) and list(data.y) == [1, 0]


def test_demo_partition_of_a_built_in_task():
    section = DataSection(task="digits", partition=2, num_partitions=4)
    assert len(read(section)) == 60


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


SENSORS_AGENT = AGENT.replace(
    'path = "windows.npz"',
    """
[data.sensors]
path = "logs"
window = 256
stride = 128
timestamp = "time"
label = "state"
""",
)


def write_log(path, rows, first=0):
    lines = ["time,vib,state"] + [
        f"2026-11-27T01:00:{r % 60:02d}Z,{np.sin(r / 5):.4f},{(r // 256) % 5}"
        for r in range(first, first + rows)
    ]
    path.write_text("\n".join(lines) + "\n")


def test_a_loggers_folder_configured_in_agent_toml_grows_between_assignments(tmp_path):
    (tmp_path / "logs").mkdir()
    write_log(tmp_path / "logs" / "day-1.csv", rows=512)
    (tmp_path / "agent.toml").write_text(SENSORS_AGENT)
    config = load_agent_config(tmp_path / "agent.toml")
    assert config.data.sensors.path == tmp_path / "logs"
    data = LocalData(config.data, MODELS["vibration"])
    assert data.read().x.shape == (3, 1, 256)  # windows start at rows 0, 128, 256
    write_log(tmp_path / "logs" / "day-2.csv", rows=256, first=512)  # the logger went on
    assert len(data.read()) == 4


def test_a_loader_gets_its_arguments_at_every_read(tmp_path, monkeypatch):
    calls = []

    def loader(limit):
        calls.append(limit)
        return Dataset(np.zeros((limit, 1, 256), np.float32), np.zeros(limit, np.int64))

    module = types.ModuleType("site_loader")
    module.load = loader
    monkeypatch.setitem(sys.modules, "site_loader", module)
    section = DataSection(task="vibration", loader="site_loader:load", loader_args={"limit": 3})
    data = LocalData(section, MODELS["vibration"])
    assert len(data.read()) == 3 and len(data.read()) == 3
    assert calls == [3, 3]


def test_labels_the_model_cannot_take_are_refused_naming_the_source(tmp_path):
    x = np.zeros((2, 1, 256), np.float32)
    np.savez(tmp_path / "w.npz", x=x, y=np.array([1, 2]) + 4)  # raw labels 5, 6
    with pytest.raises(ValueError, match=r"data.path .*w.npz: labels must be class ids 0..4"):
        read(DataSection(task="vibration", path=tmp_path / "w.npz"))


def test_an_assignment_whose_training_fails_is_counted_and_the_agent_serves_on(tmp_path):
    (tmp_path / "logs").mkdir()
    write_log(tmp_path / "logs" / "day-1.csv", rows=512)
    # A training budget as such: this test process holds far more than an agent would.
    budget = SENSORS_AGENT.replace("memory_budget_bytes", "training_budget_bytes")
    (tmp_path / "agent.toml").write_text(budget)
    ca = init_broker(make_fleet(), tmp_path / "broker").ca_cert
    (tmp_path / "ca.crt").write_bytes(ca.read_bytes())
    agent = EdgeAgent(load_agent_config(tmp_path / "agent.toml"))
    server = make_server("ftte", load_task("vibration", num_devices=1, seed=0))
    server.register("pi-001", server.full_model_peak())
    (assignment,) = server.dispatch(np.random.default_rng(0), now=0.0)
    (tmp_path / "logs" / "day-1.csv").write_text("time,vib,state\n")  # the logger restarted
    agent._handle_assignment(encode_assignment(assignment), threading.Event())
    assert agent.failed == 1 and agent.trained == 0 and agent.delivery.pending() == 0
