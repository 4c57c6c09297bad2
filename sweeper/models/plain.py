"""Plain networks for the theory studies: an MLP and a convolutional net without shortcuts."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from sweeper.models.roles import LayerRoles


class MLP(nn.Module, LayerRoles):
    """`depth` hidden layers of `width` units, each Linear (no bias) -> norm -> activation."""

    def __init__(self, depth, width, act, norm, in_features, num_classes):
        super().__init__()
        layers, f_in = [], in_features
        for _ in range(depth):
            layers += [nn.Linear(f_in, width, bias=False), norm(width), act()]
            f_in = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(f_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(torch.flatten(x, 1)))

    def output_layer_names(self) -> list[str]:
        return ["fc"]


class ConvNet(nn.Module, LayerRoles):
    """`depth` 3x3 conv (no bias) -> norm -> activation layers of `width` channels, stride 2 at
    one and two thirds of the depth, global average pooling, a linear output layer."""

    def __init__(self, depth, width, act, norm, in_channels, num_classes):
        super().__init__()
        layers, f_in = [], in_channels
        downsample_at = {depth // 3, 2 * depth // 3} - {0}
        for i in range(depth):
            stride = 2 if i in downsample_at else 1
            layers += [nn.Conv2d(f_in, width, 3, stride, 1, bias=False), norm(width), act()]
            f_in = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(f_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(x)), 1))

    def output_layer_names(self) -> list[str]:
        return ["fc"]


def mlp(depth, width, act: Callable, norm: Callable, in_channels, num_classes, input_size, residual_init):
    return MLP(depth, width, act, norm, in_channels * input_size * input_size, num_classes)


def convnet(depth, width, act: Callable, norm: Callable, in_channels, num_classes, input_size, residual_init):
    return ConvNet(depth, width, act, norm, in_channels, num_classes)
