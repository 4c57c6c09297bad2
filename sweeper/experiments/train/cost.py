"""What a training trial costs: the FLOPs of its convolutions and linear layers, the ones torch's
FLOP counter counts, over every image of every epoch.

A training step costs about 3 forward passes when weights train (forward, input gradients, weight
gradients), about 2 when every conv is frozen (no weight-gradient kernels: the BN-only case), and
about 1 when only the output layer trains (the backward pass ends there).
sweeper.plan turns these FLOPs into time on this machine's CPUs or a GPU's rate.
"""
from __future__ import annotations

import copy
import functools
import math

import torch
from torch import nn

from sweeper.data import DATASETS
from sweeper.errors import SweeperError
from sweeper.experiment import TrialCost

# Training-set and test-set sizes of the in-memory datasets (for the estimate only).
SIZES = {"digits": (1442, 355), "cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000),
         "imagenet": (1_281_167, 50_000), "imagenet224": (1_281_167, 50_000)}


class _Shaped(nn.Module):
    """Stands in for a conv or linear layer: adds the layer's FLOPs to a tally and returns zeros of
    its output shape, so that one forward pass gives every layer's shape without doing its work."""

    def __init__(self, layer: nn.Module, tally: list[int]):
        super().__init__()
        self.__dict__["layer"] = layer  # not registered: its (meta) parameters stay out of the pass
        self.tally = tally

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if isinstance(layer, nn.Linear):
            out = (*x.shape[:-1], layer.out_features)
            self.tally[0] += 2 * layer.in_features * math.prod(out)
        else:
            n, _, *size = x.shape
            pad = layer.padding if not isinstance(layer.padding, str) else (
                (0,) * len(size) if layer.padding == "valid" else None)
            if pad is None:  # "same": stride 1, output as big as the input
                spatial = tuple(size)
            else:
                spatial = tuple((s + 2 * p - d * (k - 1) - 1) // st + 1 for s, p, d, k, st in
                                zip(size, pad, layer.dilation, layer.kernel_size, layer.stride))
            out = (n, layer.out_channels, *spatial)
            self.tally[0] += 2 * (layer.in_channels // layer.groups) * math.prod(layer.kernel_size) * math.prod(out)
        return x.new_zeros(out)


def _shape_only(module: nn.Module, tally: list[int]) -> nn.Module:
    """A copy of the module tree (parameters shared, nothing copied) whose conv and linear layers
    only count and shape, and whose norm layers are identities (they keep shapes, and are not counted)."""
    from sweeper.nn.norms import is_norm

    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        return _Shaped(module, tally)
    if is_norm(module):
        return nn.Identity()
    clone = copy.copy(module)  # shallow: the same parameters, a children mapping of its own
    clone._modules = {name: None if child is None else _shape_only(child, tally)
                      for name, child in module._modules.items()}
    return clone


@functools.lru_cache(maxsize=256)
def forward_flops(family: str, depth: int, width: int, dataset: str, activation: str, norm: str) -> int:
    """FLOPs of one forward pass of one image: what torch's FlopCounterMode counts (convolutions
    and matrix products), from one pass of zeros through the network's shapes on the CPU (the
    counter itself on the meta device took seconds per deep network: every op dispatched through
    Python)."""
    from sweeper.experiments.train.model import meta_model
    from sweeper.experiments.train.spec import TrainSpec

    spec = TrainSpec.from_values({"family": family, "depth": depth, "width": width, "dataset": dataset,
                                  "activation": activation, "norm": norm})
    tally = [0]
    model = _shape_only(meta_model(spec), tally)
    if any(True for _ in model.parameters()):  # a layer with parameters of its own: not in today's families
        raise SweeperError(f"cannot count the FLOPs of {spec.model}: {type(model).__name__} has layers "
                           "the shape-only pass does not know", "family")
    c, h, w = DATASETS[dataset].shape
    with torch.no_grad():
        model.eval()(torch.zeros(1, c, h, w))
    return tally[0]


# Subsets whose training step runs no weight-gradient kernel: every conv and linear layer is frozen.
FROZEN_FEATURES = ("bn", "output", "bn+output", "none")
# Subsets whose backward pass stops at the output layer (nothing before it trains): a step costs
# about one forward pass.
OUTPUT_ONLY = ("output",)


def trial_cost(spec) -> TrialCost:
    """Estimated FLOPs of one trial: `epochs` passes over the training set (each step about 3
    forward passes, 2 with the features frozen, 1 training the output layer alone) and its passes
    over the test set (`spec.test_passes`: every `eval_every`-th epoch and the last), in the spec's
    precision. The experiment's cost hook (sweeper.experiment.Experiment.cost)."""
    train, test = SIZES[spec.dataset]
    train = min(spec.train_size, train) if spec.train_size else train
    test = min(spec.test_size, test) if spec.test_size else test
    f = forward_flops(spec.family, spec.depth, spec.width, spec.dataset, spec.activation, spec.norm)
    step = 1 if spec.trainable in OUTPUT_ONLY else 2 if spec.trainable in FROZEN_FEATURES else 3
    return TrialCost(f * (spec.epochs * train * step + spec.test_passes * test), spec.precision)
