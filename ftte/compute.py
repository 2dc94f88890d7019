"""The compute model: floating-point work one training sample costs for a given slice.

Forward runs through the whole model; backward runs only down to the earliest trainable
layer. A layer behind it passes the gradient to its input (one forward's worth of
multiply-adds) and, if its weight trains, also forms the weight gradient (another). The
simulator turns this work into time with each device's speed.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ComputeModel:
    """Per-module forward multiply-adds per sample, in ``nn.Sequential`` order."""

    forward_macs: tuple[int, ...]

    @classmethod
    def profile(cls, model: nn.Sequential, input_shape: tuple[int, ...]) -> ComputeModel:
        """Count multiply-adds of each module for one sample of ``input_shape``."""
        macs = []
        h = torch.zeros((1, *input_shape))
        model.eval()  # one sample: a batch norm in training mode would refuse it
        with torch.no_grad():
            for module in model:
                out = module(h)
                if isinstance(module, nn.Conv1d | nn.Conv2d):
                    per_output = module.in_channels // module.groups
                    for k in module.kernel_size:
                        per_output *= k
                    macs.append(out.numel() * per_output)
                elif isinstance(module, nn.Linear):
                    macs.append(module.in_features * module.out_features)
                else:
                    macs.append(out.numel())
                h = out
        return cls(tuple(macs))

    def train_flops_per_sample(self, trainable: Collection[str]) -> int:
        """FLOPs (2 per multiply-add) of one forward and the partial backward of a slice."""
        first = min(int(n.split(".", 1)[0]) for n in trainable)
        weight_layers = {int(n.split(".", 1)[0]) for n in trainable if n.endswith("weight")}
        backward = 0
        for layer in range(first, len(self.forward_macs)):
            if layer > first:
                backward += self.forward_macs[layer]
            if layer in weight_layers:
                backward += self.forward_macs[layer]
        return 2 * (sum(self.forward_macs) + backward)
