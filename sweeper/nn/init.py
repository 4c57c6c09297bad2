"""Initialisation registries: conv/linear weight distributions and γ/β initialisations.

Names follow the papers: Frankle et al. use kaiming_normal weights and γ ~ U[0, 1), β = 0;
Burkholz's theory covers most weight distributions (signed_constant is Ramanujan et al.'s
±std Rademacher weights)."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from sweeper.callspec import check_params, format_call, parse
from sweeper.errors import SweeperError
from sweeper.nn.norms import is_norm
from sweeper.registry import Registry

WeightInit = Callable[..., None]
# name -> (init(weight, generator, **params), allowed parameters)
WEIGHT_INITS: Registry[tuple[WeightInit, dict[str, type]]] = Registry("weight distribution")


def _fan_in(w: torch.Tensor) -> int:
    return w[0].numel()


def _kaiming_std(w: torch.Tensor) -> float:
    return math.sqrt(2.0 / _fan_in(w))


@torch.no_grad()
def _normal(w, g, std=None):
    w.normal_(0.0, _kaiming_std(w) if std is None else float(std), generator=g)


@torch.no_grad()
def _uniform(w, g, bound=None):
    b = math.sqrt(3.0) * _kaiming_std(w) if bound is None else float(bound)
    w.uniform_(-b, b, generator=g)


@torch.no_grad()
def _kaiming_normal(w, g):
    _normal(w, g, _kaiming_std(w))


@torch.no_grad()
def _kaiming_uniform(w, g):
    _uniform(w, g, math.sqrt(3.0) * _kaiming_std(w))


@torch.no_grad()
def _xavier_std(w):
    fan_in = _fan_in(w)
    fan_out = w.shape[0] * (w[0][0].numel() if w.dim() > 2 else 1)
    return math.sqrt(2.0 / (fan_in + fan_out))


@torch.no_grad()
def _xavier_normal(w, g):
    _normal(w, g, _xavier_std(w))


@torch.no_grad()
def _xavier_uniform(w, g):
    _uniform(w, g, math.sqrt(3.0) * _xavier_std(w))


@torch.no_grad()
def _signed_constant(w, g, std=None):
    s = _kaiming_std(w) if std is None else float(std)
    signs = torch.randint(0, 2, w.shape, generator=g, dtype=torch.int8).to(w.dtype) * 2 - 1
    w.copy_(signs * s)


@torch.no_grad()
def _orthogonal(w, g, gain=1.0):
    rows, cols = w.shape[0], w[0].numel()
    a = torch.randn(max(rows, cols), min(rows, cols), generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))
    q = q if rows >= cols else q.T
    w.copy_((float(gain) * q[:rows, :cols]).reshape(w.shape).to(w.dtype))


WEIGHT_INITS.add("kaiming_normal", (_kaiming_normal, {}))
WEIGHT_INITS.add("kaiming_uniform", (_kaiming_uniform, {}))
WEIGHT_INITS.add("xavier_normal", (_xavier_normal, {}), "glorot_normal")
WEIGHT_INITS.add("xavier_uniform", (_xavier_uniform, {}), "glorot_uniform")
WEIGHT_INITS.add("normal", (_normal, {"std": (int, float)}), "gaussian")
WEIGHT_INITS.add("uniform", (_uniform, {"bound": (int, float)}))
WEIGHT_INITS.add("signed_constant", (_signed_constant, {"std": (int, float)}))
WEIGHT_INITS.add("orthogonal", (_orthogonal, {"gain": (int, float)}))


def canonical_weight_init(text: str) -> str:
    name, params = parse(text)
    name = WEIGHT_INITS.canonical(name)
    check_params(text, params, WEIGHT_INITS[name][1])
    for key, value in params.items():
        if value <= 0:
            raise SweeperError(f"{text!r}: parameter {key!r} must be positive, got {value!r}")
    return format_call(name, {k: float(v) for k, v in params.items()})


# γ/β initialisations: name -> (gamma(shape, g), beta(shape, g))
BN_INITS: Registry[Callable[[torch.Tensor, torch.Tensor, torch.Generator], None]] = Registry(
    "γ/β initialisation"
)


@BN_INITS.register("uniform")
@torch.no_grad()
def _bn_uniform(gamma, beta, g):
    gamma.uniform_(0.0, 1.0, generator=g)  # Frankle et al.'s default: γ ~ U[0, 1), β = 0
    beta.zero_()


@BN_INITS.register("fixed", "ones")
@torch.no_grad()
def _bn_fixed(gamma, beta, g):
    gamma.fill_(1.0)
    beta.zero_()


@BN_INITS.register("uniform_pm")
@torch.no_grad()
def _bn_uniform_pm(gamma, beta, g):
    gamma.uniform_(-1.0, 1.0, generator=g)
    beta.zero_()


@torch.no_grad()
def initialise(model: nn.Module, weight_init: str, bn_init: str, seed: int) -> None:
    """Draw every conv/linear weight from `weight_init` and every norm γ/β from `bn_init`, in
    module order from one seeded generator, so the random features depend on the seed alone."""
    g = torch.Generator().manual_seed(seed)
    name, params = parse(weight_init)
    draw, _ = WEIGHT_INITS[name]
    set_bn = BN_INITS[bn_init]
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            draw(module.weight, g, **params)
            if module.bias is not None:
                module.bias.zero_()
        elif is_norm(module) and getattr(module, "weight", None) is not None:
            set_bn(module.weight, module.bias, g)
