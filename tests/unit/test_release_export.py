"""A release exported to TorchScript and ONNX gives the model's outputs."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ftte.tasks import MODELS
from ftte.wire.codec import encode_release
from ftte.wire.messages import Release
from orchestrator.export import release_model

FTTE = Path(sys.executable).parent / "ftte"


@pytest.fixture(scope="module")
def release_file(tmp_path_factory):
    spec = MODELS["vibration"]
    rng = np.random.default_rng(0)
    tensors = {
        n: rng.normal(0, 0.1, s).astype(np.float32) for n, s in spec.parameter_shapes().items()
    }
    path = tmp_path_factory.mktemp("rel") / "v7.release"
    path.write_bytes(
        encode_release(Release("job", 7, "vibration", {"accuracy": 0.9}, tensors, 0.0))
    )
    release = Release("job", 7, "vibration", {"accuracy": 0.9}, tensors, 0.0)
    return path, release


def reference(release, x):
    with torch.no_grad():
        return release_model(release, MODELS["vibration"])(torch.from_numpy(x)).numpy()


def export(path: Path, fmt: str, out: Path) -> None:
    cmd = [FTTE, "release", "export", "--release", path, "--format", fmt, "--out", out]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def test_torchscript_gives_the_models_outputs(release_file, tmp_path):
    path, release = release_file
    export(path, "torchscript", tmp_path / "m.pt")
    x = np.random.default_rng(1).normal(size=(5, 1, 256)).astype(np.float32)
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    np.testing.assert_allclose(
        loaded(torch.from_numpy(x)).detach().numpy(), reference(release, x), atol=1e-5
    )


def test_onnx_gives_the_models_outputs_for_any_batch(release_file, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is installed by make test")
    path, release = release_file
    export(path, "onnx", tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    for batch in (1, 9):
        x = np.random.default_rng(batch).normal(size=(batch, 1, 256)).astype(np.float32)
        (out,) = session.run(None, {"x": x})
        np.testing.assert_allclose(out, reference(release, x), atol=1e-4)
