"""Prediction on the device with the release it serves: what a sensing application calls.

Two ways in, both with the agent's own config (its model, runtime and state folder):

- in Python, ``Predictor.from_config(load_agent_config(path)).predict(windows)``: class
  scores (softmax of the model's outputs) for samples shaped as the model takes them;
- on the command line, ``ftte-agent --config agent.toml predict --input FILE``: one JSON line
  per sample (``{"class": k, "scores": [...]}``). ``FILE`` is an ``.npz`` with ``x``, or a
  logger's CSV windowed as the agent's ``[data.sensors]`` says.

The lean runtime serves it without torch, as it trains.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from edge_agent.config import AgentConfig
from edge_agent.releases import DeviceReleases
from edge_agent.runtime import SliceTrainer, make_trainer
from ftte.sensors import read_windows
from ftte.tasks import load_model_spec
from ftte.wire.messages import Release


class Predictor:
    """A model loaded with a release, ready to score windows."""

    def __init__(self, model: SliceTrainer, release: Release, sha256: str) -> None:
        self.model = model
        self.release = release
        self.sha256 = sha256
        model.load(release.tensors)

    @classmethod
    def from_config(cls, config: AgentConfig) -> Predictor:
        """The release the agent of ``config`` serves now, in its runtime."""
        spec = load_model_spec(config.data.task)
        releases = DeviceReleases(config.agent.state_dir / "releases", spec)
        release, sha256 = releases.current()
        return cls(make_trainer(spec, config.agent.runtime), release, sha256)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class scores (rows summing to 1) for samples ``x``."""
        logits = self.model.logits(np.asarray(x, np.float32))
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        scores: np.ndarray = shifted / shifted.sum(axis=1, keepdims=True)
        return scores


def read_input(path: Path, config: AgentConfig) -> np.ndarray:
    """The samples of an input file: an ``.npz``'s ``x``, or a CSV windowed like the
    agent's sensor data."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            return np.asarray(f["x"], np.float32)
    sensors = config.data.sensors
    if path.suffix != ".csv" or sensors is None:
        raise ValueError(
            f"{path}: give an .npz with x, or a logger's .csv when the agent has [data.sensors]"
        )
    header = path.read_text().split("\n", 1)[0].split(",")
    label = sensors.label if sensors.label in (c.strip() for c in header) else ""
    return read_windows(path, replace(sensors, path=path, label=label)).x
