"""Activation registry. Each entry builds a fresh nn.Module, so forward hooks (dead-ReLU counts,
representation probes) see every activation as its own layer."""
from __future__ import annotations

from typing import Callable

from torch import nn

from sweeper.registry import Registry

ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("activation")

ACTIVATIONS.add("relu", lambda: nn.ReLU())
ACTIVATIONS.add("leaky_relu", lambda: nn.LeakyReLU(0.01))
ACTIVATIONS.add("gelu", lambda: nn.GELU())
ACTIVATIONS.add("silu", lambda: nn.SiLU(), "swish")
ACTIVATIONS.add("tanh", lambda: nn.Tanh())
ACTIVATIONS.add("sigmoid", lambda: nn.Sigmoid())
ACTIVATIONS.add("elu", lambda: nn.ELU())
ACTIVATIONS.add("softplus", lambda: nn.Softplus())
ACTIVATIONS.add("identity", lambda: nn.Identity(), "linear")


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()
