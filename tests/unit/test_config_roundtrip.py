"""Generated configs are written by the TOML library: what is written loads back equal."""

from dataclasses import replace
from pathlib import Path

import pytest

from broker.fleet import DeviceEntry, Fleet, FleetSection, load_fleet
from broker.generate import init_broker
from edge_agent.config import AgentConfig, AgentSection, DataSection, load_agent_config
from ftte.config import ConfigError, dump_section, write_toml
from ftte.training import Optimizer, TrainSettings
from ftte.transport.mqtt import BrokerSettings
from orchestrator.config import load_job_config
from orchestrator.influence import InfluenceSettings, RobustRule
from orchestrator.localfleet import LocalFleet, LocalFleetSpec
from orchestrator.server import ServerSettings
from orchestrator.status import load_broker_account

AWKWARD = 'pi "4b" \\ rev 1.2'  # a quote and a backslash: hand-written TOML broke on both


def agent_config(tmp_path: Path, data: DataSection) -> AgentConfig:
    return AgentConfig(
        agent=AgentSection("pi-001", "farm-a", tmp_path / "state", 400_000, AWKWARD, 2.5),
        broker=BrokerSettings("gateway.local", 8883, "pi-001", 'p"w\\d', tmp_path / "ca.crt"),
        data=data,
    )


def test_agent_config_with_a_sensor_file_loads_back_equal(tmp_path):
    config = agent_config(tmp_path, DataSection(task="vibration", path=tmp_path / "w.npz"))
    write_toml(tmp_path / "agent.toml", dump_section(config), 0o600)
    assert load_agent_config(tmp_path / "agent.toml") == config


def test_agent_config_with_a_demo_partition_loads_back_equal(tmp_path):
    config = agent_config(tmp_path, DataSection(task="digits", partition=3, num_partitions=8))
    write_toml(tmp_path / "agent.toml", dump_section(config), 0o600)
    assert load_agent_config(tmp_path / "agent.toml") == config


def test_fleet_inventory_loads_back_equal(tmp_path):
    fleet = Fleet(
        FleetSection(name="farm-a", broker_host="gw.example", broker_port=8884, task="digits"),
        [
            DeviceEntry("pi-001", 400_000, AWKWARD, None, 1.5),
            DeviceEntry("pi-002", 800_000, "pi-zero", tmp_path / "windows.csv"),
        ],
    )
    write_toml(tmp_path / "fleet.toml", dump_section(fleet))
    assert load_fleet(tmp_path / "fleet.toml") == fleet


def test_a_quote_and_a_backslash_in_compute_class_survive_into_agent_toml(tmp_path):
    fleet = Fleet(FleetSection(name="farm-a"), [DeviceEntry("pi-001", 400_000, AWKWARD)])
    files = init_broker(fleet, tmp_path)
    config = load_agent_config(files.device_configs["pi-001"])
    assert config.agent.compute_class == AWKWARD


def test_generated_agent_config_is_what_the_fleet_says(tmp_path):
    fleet = Fleet(
        FleetSection(name="farm-a", broker_host="gw.example", task="vibration"),
        [DeviceEntry("pi-001", 1000, "pi-4"), DeviceEntry("pi-002", 2000, "pi-zero", None, 3.0)],
    )
    path = init_broker(fleet, tmp_path).device_configs["pi-002"]
    config = load_agent_config(path)
    assert config.agent == AgentSection(
        "pi-002", "farm-a", Path("/var/lib/ftte-agent/pi-002"), 2000, "pi-zero", 3.0
    )
    assert (config.broker.host, config.broker.username) == ("gw.example", "pi-002")
    assert config.broker.ca_file == tmp_path / "devices" / "ca.crt"
    assert config.data == DataSection(task="vibration", partition=1, num_partitions=2)


@pytest.mark.parametrize(
    ("credentials", "user"),
    [("orchestrator_credentials", "ftte_orchestrator"), ("operator_credentials", "ftte_operator")],
)
def test_generated_accounts_load_with_their_ca(tmp_path, credentials, user):
    files = init_broker(Fleet(FleetSection(name="farm-a", broker_port=8884)), tmp_path)
    account = load_broker_account(getattr(files, credentials))
    assert (account.username, account.port) == (user, 8884)
    assert account.ca_file == files.ca_cert


def test_job_config_with_strategy_and_server_tables_loads_back_equal(tmp_path):
    fleet = LocalFleet(
        LocalFleetSpec(
            run_dir=tmp_path / "fleet",
            devices=2,
            strategy="fedavg",
            strategy_params={"clients_per_round": 2, "server_lr": 0.5},
            server=ServerSettings(max_staleness=7, assignment_timeout_s=30.0),
            train=TrainSettings(epochs=1, lr=0.05),
        )
    )
    assert load_job_config(fleet.write_job_file()) == fleet.job_config()


def test_job_config_with_an_influence_table_loads_back_equal(tmp_path):
    fleet = LocalFleet(LocalFleetSpec(run_dir=tmp_path / "fleet", devices=2))
    config = replace(
        fleet.job_config(),
        influence=InfluenceSettings(
            clip_factor=4.0, robust_rule=RobustRule.TRIMMED_MEAN, screen=True, min_cosine=0.1
        ),
    )
    write_toml(tmp_path / "job.toml", dump_section(config))
    assert load_job_config(tmp_path / "job.toml") == config


def test_job_file_refuses_a_strategy_parameter_naming_the_field(tmp_path):
    path = LocalFleet(LocalFleetSpec(run_dir=tmp_path / "fleet", devices=2)).write_job_file()
    path.write_text(path.read_text().replace("[strategy]\n", "[strategy]\nbufer_size = 5\n"))
    with pytest.raises(ConfigError, match=r"strategy\.bufer_size: ftte takes no such parameter"):
        load_job_config(path)


def test_job_file_refuses_what_only_the_server_decides(tmp_path):
    path = LocalFleet(LocalFleetSpec(run_dir=tmp_path / "fleet", devices=2)).write_job_file()
    text = path.read_text().replace("[train]\n", '[train]\ndelta_encoding = "float16"\n')
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"train\.delta_encoding: unknown key"):
        load_job_config(path)


def test_job_file_takes_adam_and_refuses_it_with_sgd_momentum_naming_the_fix(tmp_path):
    path = LocalFleet(LocalFleetSpec(run_dir=tmp_path / "fleet", devices=2)).write_job_file()
    text = path.read_text().replace('optimizer = "sgd"', 'optimizer = "adam"')
    path.write_text(text)
    assert load_job_config(path).train.optimizer is Optimizer.ADAM
    path.write_text(text.replace("momentum = 0.0", "momentum = 0.9"))
    with pytest.raises(ConfigError, match=r"train: momentum is SGD's: set momentum = 0"):
        load_job_config(path)


def test_the_job_toml_of_the_operations_guide_loads_as_documented(tmp_path):
    guide = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    section = guide[guide.index("## 3. The orchestrator") :]
    start = section.index("```toml\n") + len("```toml\n")
    example = section[start : section.index("```\n", start)]
    path = tmp_path / "job.toml"
    path.write_text(example)
    config = load_job_config(path)
    assert config.job.name == "vib-1"
    assert config.influence == InfluenceSettings(clip_factor=3.0, sample_factor=2.0)
    assert config.train.steps == 0
