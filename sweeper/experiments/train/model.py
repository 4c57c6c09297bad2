"""The network of a training spec, and its parameter counts by group plus the trainable count.

Counting builds the model on PyTorch's meta device: shapes without storage, so even an ImageNet
ResNet-200 is counted in milliseconds and without memory.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from sweeper.data import DATASETS
from sweeper.experiments.train import subsets
from sweeper.models import FAMILIES
from sweeper.models.params import count_groups
from sweeper.models.roles import feature_weights
from sweeper.nn.activations import activation
from sweeper.nn.norms import norm_factory


def build_model(spec, device: str | torch.device = "cpu", num_classes: int | None = None) -> nn.Module:
    """The spec's (TrainSpec) network with the dataset's input channels and classes (uninitialised)."""
    ds = DATASETS[spec.dataset]
    family = FAMILIES[spec.family]
    channels, size, _ = ds.shape
    with torch.device(device):
        return family.build(
            spec.depth,
            spec.width,
            lambda: activation(spec.activation),
            norm_factory(spec.norm, family.norm_dims),
            in_channels=channels,
            num_classes=num_classes or ds.num_classes,
            input_size=size,
            residual_init=spec.residual_init,
        )


def count(spec, num_classes: int | None = None) -> dict[str, int]:
    """Parameter counts by group plus `trainable` under the spec's subset."""
    model = build_model(spec, device="meta", num_classes=num_classes)
    counts = count_groups(model)
    selection = subsets.SUBSETS[spec.trainable].select(model, spec.random_k, spec.seed)
    counts["trainable"] = subsets.count(selection, model)
    return counts


@functools.lru_cache(maxsize=64)
def _meta_model(spec_type: type, family: str, depth: int, width: int, dataset: str, act: str, norm: str,
                residual_init: float) -> nn.Module:
    spec = spec_type(family=family, depth=depth, width=width, dataset=dataset, activation=act, norm=norm,
                     residual_init=residual_init)
    return build_model(spec, device="meta")


def meta_model(spec) -> nn.Module:
    """The spec's network on the meta device (shapes, no storage), built once per architecture:
    a study's grid repeats each network over subsets and seeds, and building ResNet-866 takes a
    third of a second. Shared between callers: read it, never modify it."""
    return _meta_model(type(spec), spec.family, spec.depth, spec.width, spec.dataset, spec.activation, spec.norm,
                       spec.residual_init)


def min_fan_in(spec) -> int:
    fans = [w[0].numel() for _, w in feature_weights(meta_model(spec))]
    return min(fans) if fans else 0
