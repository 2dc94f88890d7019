"""The declarative layer spec: the one description of a model's architecture, torch-free.

A task describes its model as a tuple of these layers. The torch ``nn.Sequential`` (the
reference trainer, the orchestrator, the simulator) is built from it by
``ftte.tasks.torch_model.build_torch_model`` and the device's lean numpy runtime by
``edge_agent.lean``; both name parameters ``"{position}.weight"`` / ``"{position}.bias"``
with the shapes ``parameter_shapes`` gives, so updates from either runtime are
interchangeable. Batch normalisation also has buffers (``"{position}.running_mean"`` /
``"{position}.running_var"``, ``buffer_shapes``): statistics that training updates without
gradients, which travel and aggregate beside the parameters (docs/architecture.md). A
layer the spec cannot describe goes in as a ``TorchLayer``: only the torch runtime can
train such a model, and one with buffers is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Conv1d:
    """1-D convolution, stride 1, zero padding on both ends, with bias."""

    in_channels: int
    out_channels: int
    kernel_size: int
    padding: int = 0


@dataclass(frozen=True)
class Conv2d:
    """2-D convolution with a square kernel, stride 1, zero padding on every side, with bias."""

    in_channels: int
    out_channels: int
    kernel_size: int
    padding: int = 0


@dataclass(frozen=True)
class ReLU:
    """Rectified linear unit."""


@dataclass(frozen=True)
class MaxPool1d:
    """Max pooling over non-overlapping windows of ``kernel_size`` (stride = kernel)."""

    kernel_size: int


@dataclass(frozen=True)
class MaxPool2d:
    """Max pooling over non-overlapping square windows of ``kernel_size`` (stride = kernel)."""

    kernel_size: int


@dataclass(frozen=True)
class Flatten:
    """Flattens every dimension but the batch."""


@dataclass(frozen=True)
class Linear:
    """Fully connected layer with bias."""

    in_features: int
    out_features: int


@dataclass(frozen=True)
class BatchNorm1d:
    """Batch normalisation over (N, C) or (N, C, L), as ``torch.nn.BatchNorm1d``.

    In training it normalises with the batch's statistics and moves its running mean and
    (unbiased) variance towards them by ``momentum``; otherwise it uses the running ones.
    """

    num_features: int
    eps: float = 1e-5
    momentum: float = 0.1


@dataclass(frozen=True)
class BatchNorm2d:
    """Batch normalisation over (N, C, H, W), as ``torch.nn.BatchNorm2d`` (see BatchNorm1d)."""

    num_features: int
    eps: float = 1e-5
    momentum: float = 0.1


@dataclass(frozen=True)
class TorchLayer:
    """A torch module the spec cannot describe: trainable only by the torch runtime.

    ``name`` is what an error message shows (e.g. ``"BatchNorm2d(16)"``); ``factory``
    builds the module and is called only where torch is installed.
    """

    name: str
    factory: Callable[[], nn.Module]


Layer = (
    Conv1d
    | Conv2d
    | ReLU
    | MaxPool1d
    | MaxPool2d
    | Flatten
    | Linear
    | BatchNorm1d
    | BatchNorm2d
    | TorchLayer
)
LEAN_LAYERS = (
    Conv1d,
    Conv2d,
    ReLU,
    MaxPool1d,
    MaxPool2d,
    Flatten,
    Linear,
    BatchNorm1d,
    BatchNorm2d,
)
BUFFERS = ("running_mean", "running_var")  # a batch norm's buffers, in torch's order


def layer_name(layer: Layer) -> str:
    """The layer as a user wrote it, for messages."""
    return layer.name if isinstance(layer, TorchLayer) else repr(layer)


def parameter_shapes(layers: Sequence[Layer]) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in model order (torch's ``named_parameters`` order).

    A ``TorchLayer`` has parameters only torch knows: ask ``build_torch_model`` instead.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for i, layer in enumerate(layers):
        if isinstance(layer, Conv1d):
            weight: tuple[int, ...] = (layer.out_channels, layer.in_channels, layer.kernel_size)
        elif isinstance(layer, Conv2d):
            k = layer.kernel_size
            weight = (layer.out_channels, layer.in_channels, k, k)
        elif isinstance(layer, Linear):
            weight = (layer.out_features, layer.in_features)
        elif isinstance(layer, BatchNorm1d | BatchNorm2d):
            weight = (layer.num_features,)
        elif isinstance(layer, TorchLayer):
            raise ValueError(f"layer {i} ({layer.name}) has parameters only torch can list")
        else:
            continue
        shapes[f"{i}.weight"] = weight
        shapes[f"{i}.bias"] = (weight[0],)
    return shapes


def buffer_shapes(layers: Sequence[Layer]) -> dict[str, tuple[int, ...]]:
    """Every buffer the spec's layers hold (batch norms' running statistics), in model order.

    Torch's ``num_batches_tracked`` is left out: with a fixed momentum nothing reads it.
    """
    return {
        f"{i}.{name}": (layer.num_features,)
        for i, layer in enumerate(layers)
        if isinstance(layer, BatchNorm1d | BatchNorm2d)
        for name in BUFFERS
    }


def updated_buffers(layers: Sequence[Layer], first_trained: int) -> tuple[str, ...]:
    """The buffers a training pass updates when its first trainable layer is ``first_trained``.

    Layers from it on run in training mode (batch statistics, running statistics moved);
    the frozen prefix before it is inference, in eval mode, and moves nothing: it runs a
    few samples at a time, whose statistics would be noise.
    """
    return tuple(name for name in buffer_shapes(layers) if int(name.split(".")[0]) >= first_trained)
