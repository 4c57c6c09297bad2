"""Activation registry. Each entry builds a fresh nn.Module, so forward hooks (dead-ReLU counts,
representation probes) see every activation as its own layer, and carries the activation's
properties that experiments rely on:

- `linear_region`: where the activation is (close to) affine. Burkholz's construction shifts each
  unit into it; an activation without one cannot be constructed.
- `homogeneous`: positively homogeneous of degree 1 (f(c x) = c f(x) for c > 0). A network without
  rescaling built from it maps c H to c' H', so the decomposed-BN experiment may renormalise its
  representations layer by layer without changing any direction.

Adding an activation is one entry here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from sweeper.registry import Registry


@dataclass(frozen=True)
class LinearRegion:
    """mode "positive": act(u) ≈ u for u >= onset (exact for ReLU, leaky ReLU, ELU and torch's
    Softplus beyond its threshold 20; GELU's error at 6 is ~6e-9, SiLU's at 20 ~4e-8); mode
    "origin": act(u) ≈ act(0) + slope * u for |u| small (odd activations around 0, the error is
    cubic: tanh u - u ≈ -u³/3)."""

    mode: str  # "positive" | "origin"
    onset: float  # positive mode: smallest pre-activation that counts as linear
    slope: float  # act'(u) in the region
    cubic: float = 0.0  # origin mode: relative cubic error, act(u) = act(0) + slope u (1 - cubic u^2 + ...)
    offset: float = 0.0  # origin mode: |act(0)| / slope (sigmoid's 1/2 costs float precision)

    def half_width(self, dtype: torch.dtype) -> float:
        """Default pre-activation half-width ε for origin mode: balances the cubic error cubic·ε²
        against rounding, eps·(1 + offset/ε) relative (eps: the dtype's unit roundoff)."""
        if self.cubic == 0:
            return 1.0
        eps = float(torch.finfo(dtype).eps) / 2
        if self.offset > 0:
            return (eps * self.offset / (2 * self.cubic)) ** (1 / 3)
        return math.sqrt(eps / (10 * self.cubic))


@dataclass(frozen=True)
class Activation:
    build: Callable[[], nn.Module]
    linear_region: LinearRegion | None = None
    homogeneous: bool = False


ACTIVATIONS: Registry[Activation] = Registry("activation")

_POSITIVE = LinearRegion("positive", 0.0, 1.0)
ACTIVATIONS.add("relu", Activation(lambda: nn.ReLU(), _POSITIVE, homogeneous=True))
ACTIVATIONS.add("leaky_relu", Activation(lambda: nn.LeakyReLU(0.01), _POSITIVE, homogeneous=True))
ACTIVATIONS.add("gelu", Activation(lambda: nn.GELU(), LinearRegion("positive", 6.0, 1.0)))
ACTIVATIONS.add("silu", Activation(lambda: nn.SiLU(), LinearRegion("positive", 20.0, 1.0)), "swish")
ACTIVATIONS.add("tanh", Activation(lambda: nn.Tanh(), LinearRegion("origin", 0.0, 1.0, cubic=1 / 3)))
ACTIVATIONS.add(
    "sigmoid", Activation(lambda: nn.Sigmoid(), LinearRegion("origin", 0.0, 0.25, cubic=1 / 12, offset=2.0))
)
ACTIVATIONS.add("elu", Activation(lambda: nn.ELU(), _POSITIVE))
ACTIVATIONS.add("softplus", Activation(lambda: nn.Softplus(), LinearRegion("positive", 20.0, 1.0)))
ACTIVATIONS.add(
    "identity", Activation(lambda: nn.Identity(), LinearRegion("origin", 0.0, 1.0), homogeneous=True), "linear"
)


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name].build()
