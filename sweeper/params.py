"""Building a spec's model and counting its parameters by group (Frankle et al.'s Table 1).

Counting builds the model on PyTorch's meta device: shapes without storage, so even an ImageNet
ResNet-200 is counted in milliseconds and without memory.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from sweeper import subsets
from sweeper.data import DATASETS
from sweeper.models import FAMILIES
from sweeper.nn.activations import ACTIVATIONS
from sweeper.nn.norms import norm_factory
from sweeper.train_spec import TrainSpec

GROUPS = ("total", "batchnorm", "output", "shortcut")


def build_model(spec: TrainSpec, device: str | torch.device = "cpu", num_classes: int | None = None) -> nn.Module:
    """The spec's network with the dataset's input channels and classes (uninitialised)."""
    ds = DATASETS[spec.dataset]
    family = FAMILIES[spec.family]
    channels, size, _ = ds.shape
    kwargs = dict(in_channels=channels, num_classes=num_classes or ds.num_classes)
    if spec.family == "mlp":
        kwargs["input_size"] = size
    if spec.family == "resnet":
        kwargs["residual_init"] = spec.residual_init
    with torch.device(device):
        return family.build(
            spec.depth,
            spec.width,
            lambda: ACTIVATIONS[spec.activation](),
            norm_factory(spec.norm, family.norm_dims),
            **kwargs,
        )


def count_groups(model: nn.Module) -> dict[str, int]:
    params = dict(model.named_parameters())
    size = lambda names: sum(params[n].numel() for n in names)  # noqa: E731
    return {
        "total": size(params),
        "batchnorm": size(subsets.norm_params(model)),
        "output": size(subsets.output_params(model)),
        "shortcut": size(subsets.shortcut_params(model)),
    }


def count(spec: TrainSpec, num_classes: int | None = None) -> dict[str, int]:
    """Parameter counts by group plus `trainable` under the spec's subset."""
    model = build_model(spec, device="meta", num_classes=num_classes)
    counts = count_groups(model)
    selection = subsets.SUBSETS[spec.trainable].select(model, spec.random_k, spec.seed)
    counts["trainable"] = subsets.count(selection, model)
    return counts


@functools.lru_cache(maxsize=64)
def _meta_model(family: str, depth: int, width: int, dataset: str, activation: str, norm: str,
                residual_init: float) -> nn.Module:
    spec = TrainSpec(family=family, depth=depth, width=width, dataset=dataset, activation=activation, norm=norm,
                     residual_init=residual_init)
    return build_model(spec, device="meta")


def meta_model(spec: TrainSpec) -> nn.Module:
    """The spec's network on the meta device (shapes, no storage), built once per architecture:
    a study's grid repeats each network over subsets and seeds, and building ResNet-866 takes a
    third of a second. Shared between callers: read it, never modify it."""
    return _meta_model(spec.family, spec.depth, spec.width, spec.dataset, spec.activation, spec.norm,
                       spec.residual_init)


def min_fan_in(spec: TrainSpec) -> int:
    fans = [w[0].numel() for _, w in subsets.conv_params(meta_model(spec))]
    return min(fans) if fans else 0
