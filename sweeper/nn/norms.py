"""Normalisation-layer registry: the layer whose affine γ and β the `bn` subset trains.

`batch` is the papers' BatchNorm. The others let a study ask whether standardisation across the
batch matters or any per-channel affine map does (LayerNorm and InstanceNorm for convolutions are
GroupNorm with one group and with one channel per group, which keeps a per-channel γ and β)."""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn

from sweeper.callspec import check_params, format_call, parse
from sweeper.registry import Registry


class Affine(nn.Module):
    """y = γ·x + β per channel, no standardisation (the normalisation-free control)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)


# builder(channels, dims, **params) -> module; dims is 1 for MLPs, 2 for convolutions
NormBuilder = Callable[..., nn.Module]
NORMS: Registry[tuple[NormBuilder, dict[str, type]]] = Registry("norm")


class GroupNorm(nn.GroupNorm):
    """torch's GroupNorm (same parameters, state_dict and class name), run on NCHW memory on the CPU.

    Why: trials keep feature maps channels_last (faster convolutions), and torch's CPU group-norm
    kernel is slow on channels_last input: 3-10x per layer at width 8, and a whole BN-only
    ResNet-20-8 step 5.4x slower with one channel per group (instance), 2.6x with four groups and
    1.3x with one (layer), BENCHMARKS.md ("Group norms on the CPU"). Copying to NCHW and back costs
    far less. The numbers are the same up to float rounding (the reduction order differs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        y = torch.nn.functional.group_norm(x.contiguous(), self.num_groups, self.weight, self.bias, self.eps)
        return y.contiguous(memory_format=torch.channels_last)


def _batch(c: int, dims: int) -> nn.Module:
    return nn.BatchNorm2d(c) if dims == 2 else nn.BatchNorm1d(c)


def _group(c: int, dims: int, groups: int = 8) -> nn.Module:
    return GroupNorm(math.gcd(int(groups), c), c)


NORMS.add("batch", (_batch, {}), "bn", "batchnorm")
NORMS.add("layer", (lambda c, dims: GroupNorm(1, c), {}), "layernorm")
NORMS.add("group", (_group, {"groups": int}), "groupnorm")
NORMS.add("instance", (lambda c, dims: GroupNorm(c, c), {}), "instancenorm")
NORMS.add("affine", (lambda c, dims: Affine(c), {}))
NORMS.add("none", (lambda c, dims: nn.Identity(), {}))

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, Affine)


def canonical_norm(text: str) -> str:
    name, params = parse(text)
    name = NORMS.canonical(name)
    check_params(text, params, NORMS[name][1])
    return format_call(name, params)


def norm_factory(text: str, dims: int) -> Callable[[int], nn.Module]:
    name, params = parse(text)
    builder, _ = NORMS[name]
    return lambda channels: builder(channels, dims, **params)


def one_value_groups(text: str, channels: int) -> bool:
    """True when the norm standardises each channel on its own (instance, or group with one
    channel per group): fine for feature maps, but on an MLP's (N, C) features each group is a
    single value, so the layer outputs the constant β whatever the input."""
    name, params = parse(text)
    name = NORMS.canonical(name)
    if name == "instance":
        return True
    if name == "group":
        return math.gcd(int(params.get("groups", 8)), channels) == channels
    return False


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, NORM_TYPES)


@torch.no_grad()
def recalibrate(model: nn.Module, inputs: Iterable[torch.Tensor]) -> None:
    """Running statistics of every BatchNorm set to the exact average of its batch statistics over
    `inputs` (a cumulative moving average, momentum None), then eval mode. For a network evaluated
    with statistics it never trained with: an untrained network (subset `none`), or a source network
    whose γ, β were changed. Momenta are restored afterwards."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for x in inputs:
        model(x)
    for bn, momentum in zip(norms, saved):
        bn.momentum = momentum
    model.eval()
