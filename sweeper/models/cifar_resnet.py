"""The CIFAR ResNet-D-W family of Frankle et al. (open_lth's `cifar_resnet_D_W`).

A 3x3 conv (3 -> W, no bias), norm, activation; three stages of widths W, 2W, 4W, each of
n = (D - 2) / 6 basic blocks; the first block of stages 2 and 3 has stride 2 and a 1x1 conv + norm
shortcut, every other shortcut is the identity; global average pooling; a linear layer with bias.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from sweeper.errors import SweeperError


class Block(nn.Module):
    def __init__(self, f_in: int, f_out: int, downsample: bool, act, norm, residual_init: float):
        super().__init__()
        stride = 2 if downsample else 1
        self.conv1 = nn.Conv2d(f_in, f_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(f_out)
        self.act1 = act()
        self.conv2 = nn.Conv2d(f_out, f_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm(f_out)
        if downsample or f_in != f_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(f_in, f_out, 1, stride=stride, bias=False), norm(f_out)
            )
        else:
            self.shortcut = nn.Sequential()
        # SkipInit (De & Smith 2020): a scalar on the residual branch, for norm-free networks.
        self.residual_scale = (
            nn.Parameter(torch.tensor(float(residual_init))) if residual_init != 1.0 else None
        )
        self.act2 = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual_scale is not None:
            out = out * self.residual_scale
        return self.act2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(
        self,
        depth: int,
        width: int,
        act: Callable[[], nn.Module],
        norm: Callable[[int], nn.Module],
        in_channels: int = 3,
        num_classes: int = 10,
        residual_init: float = 1.0,
    ):
        super().__init__()
        check_depth(depth)
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn = norm(width)
        self.act = act()
        blocks, f_in = [], width
        for stage, f_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                downsample = stage > 0 and i == 0
                blocks.append(Block(f_in, f_out, downsample, act, norm, residual_init))
                f_in = f_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(f_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.conv(x)))
        x = self.blocks(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def check_depth(depth: int) -> None:
    if depth < 8 or (depth - 2) % 6:
        raise SweeperError(
            f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 56, 110, ...), got {depth}",
            "depth",
        )
