"""The target registry of the construction: the name a study's `target` axis uses -> the network the
random source must reproduce (torch).

Each entry builds the target's layers for an input shape and a class count, and says which inputs
it is made for, so that a spec pairing a target with a dataset it cannot read is refused before any
trial runs. Adding a target is one entry here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from torch import nn

from sweeper.nn.activations import activation
from sweeper.registry import Registry


@dataclass(frozen=True)
class Target:
    # (spec, input shape (C, H, W), classes) -> the layers of an nn.Sequential
    layers: Callable[..., list[nn.Module]]
    description: str
    input_shape: tuple[int, int, int] | None = None  # the one image shape it is made for; None: any


TARGETS: Registry[Target] = Registry("target")


def _mlp(spec, in_shape, num_classes) -> list[nn.Module]:
    c, h, w = in_shape
    layers: list[nn.Module] = [nn.Flatten()]
    width = c * h * w
    for _ in range(spec.hidden_layers):
        layers += [nn.Linear(width, spec.hidden), activation(spec.activation)]
        width = spec.hidden
    return layers + [nn.Linear(width, num_classes)]


def _cnn(spec, in_shape, num_classes) -> list[nn.Module]:
    c, k, ch = in_shape[0], spec.kernel_size, spec.cnn_channels
    return [nn.Conv2d(c, ch, k, padding=k // 2), activation(spec.activation), nn.MaxPool2d(2),
            nn.Conv2d(ch, ch, k, padding=k // 2), activation(spec.activation),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, num_classes)]


def _cifar_cnn(spec, in_shape, num_classes) -> list[nn.Module]:
    # Pooling early keeps the source affordable: its first block is m ≈ 27 c random 3x3 filters at
    # full resolution. A 4x4 map flattened into the classifier (rather than global pooling, as in
    # `cnn`) keeps where things are, which a two-conv network needs on CIFAR: it trains to about
    # 50% in one epoch on 10,000 images at c = 8.
    c, k, ch = in_shape[0], spec.kernel_size, spec.cnn_channels
    return [nn.Conv2d(c, ch, k, padding=k // 2), activation(spec.activation), nn.MaxPool2d(2),
            nn.Conv2d(ch, ch, k, padding=k // 2), activation(spec.activation), nn.MaxPool2d(4),
            nn.Flatten(), nn.Linear(ch * (in_shape[1] // 8) * (in_shape[2] // 8), num_classes)]


TARGETS.add("mlp", Target(_mlp, "fully connected: hidden_layers x (linear to `hidden`, activation), linear"))
TARGETS.add("cnn", Target(_cnn, "conv (cnn_channels), act, maxpool 2, conv, act, global average pool, linear"))
TARGETS.add("cifar-cnn", Target(_cifar_cnn, "CIFAR's 3x32x32 images: conv (cnn_channels), act, maxpool 2, conv, "
                                            "act, maxpool 4, flatten 4x4, linear", input_shape=(3, 32, 32)))


def build_layers(spec, in_shape: tuple[int, int, int], num_classes: int) -> list[nn.Module]:
    return TARGETS[spec.target].layers(spec, in_shape, num_classes)


def init_uniform(net: nn.Module, g) -> None:
    """PyTorch's default init (kaiming uniform, a = sqrt(5); bias U(±1/sqrt(fan_in))), seeded."""
    for mod in net.modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_uniform_(mod.weight, a=math.sqrt(5), generator=g)
            bound = 1 / math.sqrt(mod.weight[0].numel())
            mod.bias.uniform_(-bound, bound, generator=g)
