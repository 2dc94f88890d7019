"""Prediction on the device with the release it serves: what a sensing application calls.

Two ways in, both with the agent's own config (its model, runtime, data and state folder):

- in Python, ``Predictor.from_config(load_agent_config(path)).predict(windows)``: one dict
  per sample shaped as the model takes them (``outputs`` gives the raw model outputs);
- on the command line, ``ftte-agent --config agent.toml predict --input FILE``: one JSON line
  per sample. ``FILE`` is an ``.npz`` with ``x``, or a logger's CSV windowed as the agent's
  ``[data.sensors]`` says.

What a sample's answer holds is the objective's (``ftte.tasks.objectives``): a class and
the scores of every class (classification), the output values (regression), or an anomaly
score — the window's reconstruction error — with ``anomaly`` true when it is above the
device's own threshold (reconstruction). The threshold is set when the predictor loads:
the ``THRESHOLD_QUANTILE`` quantile of the scores of the device's held-out windows (the
same ``[data] holdout`` share the agent measures models on), so each device flags what is
unusual for its own machine; with no held-out windows there is no threshold and no flag.

The lean runtime serves it without torch, as it trains.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.config import AgentConfig
from edge_agent.data import LocalData
from edge_agent.releases import DeviceReleases
from edge_agent.runtime import SliceTrainer, make_trainer
from ftte.sensors import read_windows
from ftte.tasks import load_model_spec
from ftte.tasks.base import Dataset, ModelSpec, hold_out
from ftte.tasks.objectives import RECONSTRUCTION, Objective, anomaly_threshold
from ftte.wire.messages import Release


class Predictor:
    """A model loaded with a release, ready to answer for windows under its objective."""

    def __init__(
        self,
        model: SliceTrainer,
        release: Release,
        sha256: str,
        objective: Objective,
        held_out: Dataset | None = None,
    ) -> None:
        """``held_out``: the device's own held-out windows, for a reconstruction model's
        anomaly threshold."""
        self.model = model
        self.release = release
        self.sha256 = sha256
        self.objective = objective
        model.load(release.tensors)
        self.threshold: float | None = None
        if objective is RECONSTRUCTION and held_out is not None and len(held_out):
            scores = [a["score"] for a in self.predict(held_out.x)]
            self.threshold = anomaly_threshold(np.array(scores))

    @classmethod
    def from_config(cls, config: AgentConfig) -> Predictor:
        """The release the agent of ``config`` serves now, in its runtime."""
        spec = load_model_spec(config.data.task)
        releases = DeviceReleases(config.agent.state_dir / "releases", spec)
        release, sha256 = releases.current()
        model = make_trainer(spec, config.agent.runtime)
        return cls(model, release, sha256, spec.objective, _held_out(config, spec))

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """The model's raw outputs for samples ``x``."""
        return self.model.logits(np.asarray(x, np.float32))

    def predict(self, x: np.ndarray) -> list[dict[str, Any]]:
        """One answer per sample of ``x``, as the objective gives it (see the module)."""
        x = np.asarray(x, np.float32)
        return self.objective.predictions(self.outputs(x), x, self.threshold)


def _held_out(config: AgentConfig, spec: ModelSpec) -> Dataset | None:
    """The device's held-out windows, where its objective needs them to predict."""
    if spec.objective is not RECONSTRUCTION:
        return None
    return hold_out(LocalData(config.data, spec).read(), config.data.holdout)[1]


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
