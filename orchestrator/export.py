"""A release as a file other tools run: TorchScript or ONNX.

The release holds the values of every tensor of the model (parameters and batch norms'
running statistics, which both exports use: the model is exported in eval mode); the
architecture comes from the task's model spec (``release.model`` names it). Both exports
take a batch of samples shaped as the model takes them (any batch size) and give the
model's outputs (logits); a test checks them against the model on the same input. ONNX
uses torch's TorchScript-based exporter (``dynamo=False``), which needs the ``onnx``
package (in ``[server]``); run the file with ``onnxruntime`` or any ONNX runtime.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import torch

from ftte.tasks.base import ModelSpec
from ftte.tasks.torch_model import model_buffers
from ftte.wire.messages import Release


class ExportFormat(StrEnum):
    """What ``export_release`` writes."""

    TORCHSCRIPT = "torchscript"
    ONNX = "onnx"


def release_model(release: Release, spec: ModelSpec) -> torch.nn.Sequential:
    """The torch model of ``spec`` holding ``release``'s values, in eval mode."""
    if release.model != spec.name:
        raise ValueError(f"release of model {release.model!r}, not the task's {spec.name!r}")
    model = spec.make_model().eval()
    tensors = dict(model.named_parameters()) | model_buffers(model, spec.layers)
    if set(tensors) != set(release.tensors):
        raise ValueError("the release's tensors are not the model's parameters and buffers")
    with torch.no_grad():
        for name, value in release.tensors.items():
            tensors[name].copy_(torch.from_numpy(value))
    return model


def export_release(release: Release, spec: ModelSpec, fmt: ExportFormat, out: Path) -> Path:
    """Write ``release`` as ``fmt`` to ``out``; return ``out``."""
    model = release_model(release, spec)
    example = torch.zeros((1, *spec.input_shape), dtype=torch.float32)
    if fmt is ExportFormat.TORCHSCRIPT:
        torch.jit.trace(model, example).save(str(out))
    else:
        torch.onnx.export(
            model,
            (example,),
            str(out),
            dynamo=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )
    return out
