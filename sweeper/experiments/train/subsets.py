"""Trainable-subset registry: which parameters (or which entries of them) SGD may move.

Frozen means frozen: a fully frozen tensor gets requires_grad=False (so its conv skips the weight-
gradient kernel and neither momentum nor weight decay can touch it); a partly trainable tensor
(`random`) gets a 0/1 mask that `mask_gradients` applies to the gradient *after* adding weight
decay, so its momentum buffer stays zero on frozen entries and they stay bitwise unchanged.

Which parameters are the output layer, the shortcuts and the norms, the model says itself
(sweeper.models.roles).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from sweeper import seeds
from sweeper.models.roles import feature_weights, norm_params, output_params, shortcut_params
from sweeper.registry import Registry

# A selection maps parameter name -> True (train all of it) or a 0/1 mask (train these entries).
Selection = dict[str, "bool | torch.Tensor"]


@dataclass(frozen=True)
class Subset:
    select: Callable[[nn.Module, int, int], Selection]  # (model, k, seed) -> selection
    fixes_norm_affine: bool = False  # γ, β pinned at 1, 0 (the `all-but-bn` control)
    description: str = ""


SUBSETS: Registry[Subset] = Registry("trainable subset")


def _names(*groups: Callable[[nn.Module], list[str]]) -> Callable[[nn.Module, int, int], Selection]:
    return lambda model, k, seed: {n: True for g in groups for n in g(model)}


def _random_k(model: nn.Module, k: int, seed: int) -> Selection:
    """k randomly chosen weights per conv output channel or hidden unit (2 each = the BN count):
    the baseline that trains as many parameters as BN-only, but of the wrong kind."""
    g = torch.Generator().manual_seed(seeds.subset(seed))
    selection: Selection = {}
    for name, weight in feature_weights(model):
        out, fan_in = weight.shape[0], weight[0].numel()
        scores = torch.rand(out, fan_in, generator=g)
        chosen = scores.topk(min(k, fan_in), dim=1).indices
        mask = torch.zeros(out, fan_in).scatter_(1, chosen, 1.0)
        selection[name] = mask.view_as(weight)
    return selection


SUBSETS.add("all", Subset(lambda m, k, s: {n: True for n, _ in m.named_parameters()}, description="every parameter"))
SUBSETS.add("bn", Subset(_names(norm_params), description="only the normalisation layers' γ and β"), "norm")
SUBSETS.add("output", Subset(_names(output_params), description="only the final linear layer"))
SUBSETS.add("bn+output", Subset(_names(norm_params, output_params), description="γ, β and the output layer"))
SUBSETS.add(
    "all-but-bn",
    Subset(
        lambda m, k, s: {n: True for n, _ in m.named_parameters() if n not in set(norm_params(m))},
        fixes_norm_affine=True,
        description="everything except γ, β (frozen at 1, 0)",
    ),
)
SUBSETS.add("shortcut", Subset(_names(shortcut_params), description="the 1x1 shortcut conv weights"))
SUBSETS.add("random", Subset(_random_k, description="k random conv weights per output channel"), "random-k")
SUBSETS.add("none", Subset(lambda m, k, s: {}, description="nothing: evaluate at initialisation"))


def apply(model: nn.Module, subset: str, k: int, seed: int) -> Selection:
    """Set requires_grad from the subset and return its selection (for masks and counting)."""
    selection = SUBSETS[subset].select(model, k, seed)
    for name, p in model.named_parameters():
        p.requires_grad_(name in selection)
    return selection


def count(selection: Selection, model: nn.Module) -> int:
    params = dict(model.named_parameters())
    return int(sum(params[n].numel() if m is True else int(m.sum()) for n, m in selection.items()))


def masks(selection: Selection, model: nn.Module) -> dict[nn.Parameter, torch.Tensor]:
    params = dict(model.named_parameters())
    return {params[n]: m.to(params[n].device) for n, m in selection.items() if m is not True}


@torch.no_grad()
def mask_gradients(param_masks: dict[nn.Parameter, torch.Tensor], weight_decay: float) -> None:
    """For partly trainable tensors: add weight decay by hand, then zero frozen entries, so the
    optimiser (which gets weight_decay=0 for them) never moves a frozen entry."""
    for p, m in param_masks.items():
        if p.grad is None:
            continue
        if weight_decay:
            p.grad.add_(p, alpha=weight_decay)
        p.grad.mul_(m)
