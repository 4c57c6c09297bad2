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
from sweeper.models.roles import LayerRoles


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


class CifarResNet(nn.Module, LayerRoles):
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
        # Each norm layer's (stage, block within the stage, role), for the `bn` table: the stem is
        # stage 0, the three stages of blocks are 1-3.
        self._positions = {"bn": (0, 0, "stem")}
        self._shortcuts = []
        for stage, f_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                downsample = stage > 0 and i == 0
                block = Block(f_in, f_out, downsample, act, norm, residual_init)
                k = len(blocks)
                self._positions[f"blocks.{k}.bn1"] = (stage + 1, i, "bn1")
                self._positions[f"blocks.{k}.bn2"] = (stage + 1, i, "bn2")
                if len(block.shortcut):  # a 1x1 conv + norm; otherwise the identity
                    self._positions[f"blocks.{k}.shortcut.1"] = (stage + 1, i, "shortcut")
                    self._shortcuts.append(f"blocks.{k}.shortcut.0")
                blocks.append(block)
                f_in = f_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(f_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.conv(x)))
        x = self.blocks(x)
        return self.fc(torch.flatten(self.pool(x), 1))

    # -- layer roles (sweeper.models.roles) --------------------------------------------------------
    def output_layer_names(self) -> list[str]:
        return ["fc"]

    def shortcut_layer_names(self) -> list[str]:
        return list(self._shortcuts)

    def stage_of(self, norm_layer: str) -> tuple[int, int, str]:
        return self._positions.get(norm_layer, (-1, -1, norm_layer))


def cifar_resnet(depth, width, act, norm, in_channels, num_classes, input_size, residual_init) -> CifarResNet:
    return CifarResNet(depth, width, act, norm, in_channels, num_classes, residual_init)


def check_depth(depth: int) -> None:
    if depth < 8 or (depth - 2) % 6:
        raise SweeperError(
            f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 56, 110, ...), got {depth}",
            "depth",
        )
