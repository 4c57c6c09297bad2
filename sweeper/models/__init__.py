"""Model-family registry and the shorthand names a reader of the papers uses.

`resnet-110` is the CIFAR ResNet family at depth 110 and width 16; `resnet-20-32` sets width 32;
`wrn-14-8` is depth 14 at width 16·8; `imagenet-resnet-50` is torchvision's ResNet-50;
`mlp-4-256` and `convnet-6-64` are the plain networks at depth and width.

Adding a family is one module that builds its nn.Module, which declares its layer roles
(sweeper.models.roles.LayerRoles), and one FAMILIES entry.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from torch import nn

from sweeper.errors import SweeperError
from sweeper.registry import Registry


@dataclass(frozen=True)
class Family:
    # (depth, width, act, norm, in_channels, num_classes, input_size, residual_init) -> the network,
    # a LayerRoles module; a family ignores the arguments it has no use for
    build: Callable[..., nn.Module]
    default_width: int
    norm_dims: int  # 2 for conv nets (images, channels_last), 1 for MLPs (flat features)
    check: Callable[[int, int], None]
    short_name: Callable[[int, int], str]
    residual_scale: bool = False  # has a SkipInit residual-branch scale (TrainSpec.residual_init)
    classes: int | None = None  # classes `sweeper params` counts with when no dataset is named

    @property
    def convolutional(self) -> bool:
        return self.norm_dims == 2


FAMILIES: Registry[Family] = Registry("model family")


def _positive(depth: int, width: int) -> None:
    if depth < 1:
        raise SweeperError(f"depth must be at least 1, got {depth}", "depth")
    if width < 1:
        raise SweeperError(f"width must be at least 1, got {width}", "width")


def _cifar_resnet_check(depth: int, width: int) -> None:
    from sweeper.models.cifar_resnet import check_depth

    _positive(depth, width)
    check_depth(depth)


def _cifar_resnet_name(depth: int, width: int) -> str:
    if width == 16:
        return f"resnet-{depth}"
    if width % 16 == 0:
        return f"wrn-{depth}-{width // 16}"
    return f"resnet-{depth}-{width}"


def _imagenet_check(depth: int, width: int) -> None:
    from sweeper.models.imagenet_resnet import LAYOUTS, check_depth

    _positive(depth, width)
    check_depth(depth)
    if depth in (18, 34) and width != 64:
        raise SweeperError(f"ImageNet ResNet-{depth} (basic blocks) has width 64, got {width}", "width")


def _lazy(module: str, name: str) -> Callable[..., nn.Module]:
    def build(*args, **kwargs):
        import importlib

        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    return build


FAMILIES.add(
    "resnet",
    Family(
        _lazy("sweeper.models.cifar_resnet", "cifar_resnet"),
        16,
        2,
        _cifar_resnet_check,
        _cifar_resnet_name,
        residual_scale=True,
    ),
    "cifar_resnet",
)
FAMILIES.add(
    "imagenet-resnet",
    Family(
        _lazy("sweeper.models.imagenet_resnet", "imagenet_resnet"),
        64,
        2,
        _imagenet_check,
        lambda d, w: f"imagenet-resnet-{d}" if w == 64 else f"imagenet-resnet-{d}-{w}",
        classes=1000,  # counted with ImageNet's 1,000 classes unless a dataset is named
    ),
    "imagenet_resnet",
)
FAMILIES.add(
    "mlp", Family(_lazy("sweeper.models.plain", "mlp"), 256, 1, _positive, lambda d, w: f"mlp-{d}-{w}")
)
FAMILIES.add(
    "convnet",
    Family(_lazy("sweeper.models.plain", "convnet"), 64, 2, _positive, lambda d, w: f"convnet-{d}-{w}"),
)

_SHORTHAND = re.compile(r"^(?P<family>[a-z][a-z_-]*?)-(?P<depth>\d+)(?:-(?P<w>\d+))?$")


def parse_model(name: str) -> tuple[str, int, int]:
    """`wrn-14-8` -> ("resnet", 14, 128); refuses unknown families with the valid choices."""
    match = _SHORTHAND.match(name) if isinstance(name, str) else None
    if not match:
        raise SweeperError(
            f"cannot read model {name!r}; expected FAMILY-DEPTH[-WIDTH] such as resnet-110, "
            f"wrn-14-8, imagenet-resnet-50, mlp-4-256",
            "model",
        )
    family, depth, w = match.group("family"), int(match.group("depth")), match.group("w")
    if family == "wrn":
        if w is None:
            raise SweeperError(f"wide ResNets are named wrn-DEPTH-K, got {name!r}", "model")
        return "resnet", depth, 16 * int(w)
    try:
        family = FAMILIES.canonical(family)
    except SweeperError as e:
        raise SweeperError(f"{e.message} (or wrn)", "model") from None
    width = int(w) if w is not None else FAMILIES[family].default_width
    return family, depth, width


def model_name(family: str, depth: int, width: int) -> str:
    return FAMILIES[family].short_name(depth, width)
