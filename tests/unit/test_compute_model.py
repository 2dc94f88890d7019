"""The compute model: partial backward costs less the later the first trainable layer."""

from torch import nn

from ftte.compute import ComputeModel


def model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_forward_macs_per_module():
    # Linear 4x8 = 32 MACs, ReLU touches 8 outputs, Linear 8x2 = 16 MACs.
    assert ComputeModel.profile(model(), (4,)).forward_macs == (32, 8, 16)


def test_last_layer_slice_skips_backward_below_it():
    cm = ComputeModel.profile(model(), (4,))
    # forward 56; backward: weight grad of layer 2 (16) only.
    assert cm.train_flops_per_sample(["2.weight"]) == 2 * (56 + 16)


def test_full_slice_pays_input_and_weight_gradients():
    cm = ComputeModel.profile(model(), (4,))
    # forward 56; layer 0: weight grad 32; ReLU: input grad 8; layer 2: input 16 + weight 16.
    full = ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert cm.train_flops_per_sample(full) == 2 * (56 + 32 + 8 + 16 + 16)
