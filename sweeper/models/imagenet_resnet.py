"""ImageNet ResNets on torchvision's own blocks (ResNet-18 ... 152, and ResNet-200)."""
from __future__ import annotations

from typing import Callable

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from sweeper.errors import SweeperError
from sweeper.models.roles import LayerRoles

LAYOUTS = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
    200: (Bottleneck, [3, 24, 36, 3]),
}


def check_depth(depth: int) -> None:
    if depth not in LAYOUTS:
        valid = ", ".join(map(str, LAYOUTS))
        raise SweeperError(f"ImageNet ResNet depth must be one of {valid}, got {depth}", "depth")


class ImageNetResNet(ResNet, LayerRoles):
    """torchvision's ResNet, unchanged (same modules, parameter names and counts), declaring its
    layer roles. Its norm layers keep stage -1: the `bn` table has recorded them so."""

    def output_layer_names(self) -> list[str]:
        return ["fc"]

    def shortcut_layer_names(self) -> list[str]:
        return [
            f"{name}.downsample.0"
            for name, block in self.named_modules()
            if isinstance(block, (BasicBlock, Bottleneck)) and block.downsample is not None
        ]


def imagenet_resnet(
    depth: int,
    width: int,
    act: Callable[[], nn.Module],
    norm: Callable[[int], nn.Module],
    in_channels: int = 3,
    num_classes: int = 1000,
    input_size: int = 224,
    residual_init: float = 1.0,
) -> nn.Module:
    """input_size and residual_init are unused: the network pools globally and has no
    residual-branch scale."""
    check_depth(depth)
    block, layers = LAYOUTS[depth]
    # torchvision's `width_per_group` scales the bottleneck width (wide ResNets); 64 is standard.
    kwargs = {"width_per_group": width} if block is Bottleneck else {}
    model = ImageNetResNet(block, layers, num_classes=num_classes, norm_layer=norm, **kwargs)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    # torchvision hard-codes ReLU as one shared module per block; give each block its own activation
    # module so a study can swap it (hooks then see one module per block, called two or three times
    # in that block: the dead-ReLU measurement counts each call apart).
    model.relu = act()
    for module in model.modules():
        if isinstance(module, (BasicBlock, Bottleneck)):
            module.relu = act()
    return model
