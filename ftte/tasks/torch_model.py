"""The torch side of the layer spec: ``nn.Sequential`` built from a task's layers.

Imported only where torch is installed (orchestrator, simulator, the torch runtime): the
lean device runtime builds its model from the same spec without it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ftte.tasks.layers import (
    BatchNorm1d,
    BatchNorm2d,
    Conv1d,
    Conv2d,
    Flatten,
    Layer,
    Linear,
    MaxPool1d,
    MaxPool2d,
    ReLU,
    TorchLayer,
    buffer_shapes,
    layer_name,
)


def build_torch_model(layers: Sequence[Layer]) -> nn.Sequential:
    """A fresh ``nn.Sequential`` of ``layers``, He-initialised; position ``i`` is module ``i``."""
    return he_init(nn.Sequential(*(_module(layer) for layer in layers)))


def _module(layer: Layer) -> nn.Module:
    if isinstance(layer, Conv1d):
        return nn.Conv1d(
            layer.in_channels, layer.out_channels, layer.kernel_size, padding=layer.padding
        )
    if isinstance(layer, Conv2d):
        return nn.Conv2d(
            layer.in_channels, layer.out_channels, layer.kernel_size, padding=layer.padding
        )
    if isinstance(layer, ReLU):
        return nn.ReLU()
    if isinstance(layer, MaxPool1d):
        return nn.MaxPool1d(layer.kernel_size)
    if isinstance(layer, MaxPool2d):
        return nn.MaxPool2d(layer.kernel_size)
    if isinstance(layer, Flatten):
        return nn.Flatten()
    if isinstance(layer, Linear):
        return nn.Linear(layer.in_features, layer.out_features)
    if isinstance(layer, BatchNorm1d):
        return nn.BatchNorm1d(layer.num_features, eps=layer.eps, momentum=layer.momentum)
    if isinstance(layer, BatchNorm2d):
        return nn.BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum)
    if isinstance(layer, TorchLayer):
        return layer.factory()
    raise TypeError(f"not a layer of ftte.tasks.layers: {layer!r}")


def he_init(model: nn.Sequential) -> nn.Sequential:
    """He-normal weights and zero biases for every convolution and linear layer; returns it.

    PyTorch's default init shrinks activations by about 1/sqrt(3) per ReLU layer, so a
    randomly initialised frozen prefix hands the last layers near-constant features and a
    slice of only those layers cannot learn (measured on digits: head-only training stayed
    at chance; with He init it reaches 0.66 train accuracy on the same frozen prefix).
    """
    for module in model:
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def model_buffers(model: nn.Sequential, layers: Sequence[Layer]) -> dict[str, torch.Tensor]:
    """The buffers of ``model`` that ftte moves (``buffer_shapes``), by name.

    A buffer it cannot move (one of a ``TorchLayer``) is a ``ValueError`` naming the layer:
    dropped, it would leave every device and the server at its initial value (a BatchNorm
    model measured 15 points worse).
    """
    known = buffer_shapes(layers)
    found = dict(model.named_buffers())
    for name in found:
        position = int(name.split(".", 1)[0])
        layer = layers[position]
        if name not in known and not isinstance(layer, BatchNorm1d | BatchNorm2d):
            raise ValueError(
                f"layer {position} ({layer_name(layer)}) has buffer {name!r}, which ftte cannot "
                "send, aggregate or save: use ftte.tasks.layers.BatchNorm1d/BatchNorm2d for "
                "batch normalisation, or a layer without buffers (GroupNorm, LayerNorm)"
            )
    return {name: found[name] for name in known}
