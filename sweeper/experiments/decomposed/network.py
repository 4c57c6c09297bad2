"""The random network of the decomposed-BN experiment: BN split into recentering (RC), rescaling
(RS) and the non-linearity (NL), in a deep MLP that is never trained.

Weights are regenerated per layer from (seed, layer), so a depth-300 network at d = 512 never holds
more than one d x d matrix, and the first L layers of a deeper network are the same network.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from torch import nn

from sweeper import seeds
from sweeper.nn.activations import ACTIVATIONS, activation
from sweeper.registry import Registry

#: rescaling rule: (x [n, d], eps) -> x divided per neuron (column of x) by a batch statistic
RESCALINGS: Registry[Callable[[torch.Tensor, float], torch.Tensor] | None] = Registry("rescaling")
RESCALINGS.add("none", None, "off")
RESCALINGS.add("std", lambda x, eps: x / torch.sqrt(x.var(0, unbiased=False, keepdim=True) + eps), "bn")
RESCALINGS.add("rownorm", lambda x, eps: x / torch.sqrt(x.pow(2).mean(0, keepdim=True) + eps), "rms")
RESCALINGS.add("global", lambda x, eps: x / torch.sqrt(x.pow(2).mean() + eps))



class DecomposedNorm(nn.Module):
    """Batch normalisation without affine parameters, split into independent switches.

    Input is batch-first, ``[n, d]`` (like nn.BatchNorm1d); statistics are taken over the batch,
    per neuron. ``rc`` subtracts the batch mean; ``rs`` is ``"none"``, ``"std"`` (divide by
    sqrt(biased batch variance + eps)), ``"rownorm"`` (divide by sqrt(mean of squares + eps), so
    each neuron's row across the batch has norm sqrt(n)) or ``"global"`` (divide every entry by
    sqrt(mean of all squares + eps): one scalar for the layer). With rc and rs="std" this is
    ``nn.BatchNorm1d(d, affine=False)`` in training mode.
    """

    def __init__(self, rc: bool = True, rs: str = "std", eps: float = 1e-5):
        super().__init__()
        self.rc = bool(rc)
        self.rs = RESCALINGS.canonical(rs)
        self.eps = float(eps)
        self._rescale = RESCALINGS[self.rs]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise ValueError(f"expected [batch, features], got shape {tuple(x.shape)}")
        if self.rc:
            x = x - x.mean(0, keepdim=True)
        if self._rescale is not None:
            x = self._rescale(x, self.eps)
        return x

    def extra_repr(self) -> str:
        return f"rc={self.rc}, rs={self.rs!r}, eps={self.eps}"



#: seed streams: derived(seed, stream, ...) (sweeper.seeds)
INPUT_STREAM, WEIGHT_STREAM, PROJECTION_STREAM, SELECTION_STREAM = 0, 1, 2, 3


class DecomposedMLP(nn.Module):
    """The random MLP: width d, depth L, layer l = act(norm(W_l h)), W_l ~ N(0, 1/d), untrained.

    Weights are not stored: `weight(l)` redraws W_l from (seed, l). The draw is always float32
    (torch's float32 normal sampler is ~7x faster than its float64 one on the CPU), then cast to
    `dtype`, so the float32 and float64 networks of a spec are the same network.
    """

    def __init__(self, width: int, depth: int, rc: bool, rs: str, nl: str, eps: float = 1e-5,
                 seed: int = 0, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.width, self.depth, self.seed, self.dtype = int(width), int(depth), int(seed), dtype
        self.norm = DecomposedNorm(rc, rs, eps)
        self.nl = ACTIVATIONS.canonical(nl)
        self.act = activation(self.nl)

    @property
    def homogeneous(self) -> bool:
        """True when the whole layer is positively homogeneous: rescaling its input only rescales
        its output (no RS, whose eps breaks exact invariance, and a homogeneous activation)."""
        return self.norm.rs == "none" and ACTIVATIONS[self.nl].homogeneous

    def weight(self, layer: int) -> torch.Tensor:
        if not 1 <= layer <= self.depth:
            raise IndexError(f"layer {layer} outside 1..{self.depth}")
        g = torch.Generator().manual_seed(seeds.derived(self.seed, WEIGHT_STREAM, layer))
        w = torch.randn(self.width, self.width, generator=g, dtype=torch.float32)
        return w.mul_(1.0 / math.sqrt(self.width)).to(self.dtype)

    def trace(self, x: torch.Tensor, renormalize: bool = True
              ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, float]]:
        """Yield ``(layer, normed, out, log_scale)`` for layers 1..L; x is ``[n, d]``.

        ``normed`` is the pre-activation after RC/RS, ``out`` the layer's output. When
        `renormalize` and the network is homogeneous, the propagated state is divided by its RMS
        after every layer, which changes no direction and keeps depth-300 ReLU networks without RS
        finite in float32; the true tensors are then ``exp(log_scale) * normed`` and
        ``exp(log_scale) * out`` (log_scale is 0 otherwise).
        """
        h = x.to(self.dtype)
        log_scale = 0.0  # true h = exp(log_scale) * h
        rescale = renormalize and self.homogeneous
        for layer in range(1, self.depth + 1):
            normed = self.norm(h @ self.weight(layer).T)
            out = self.act(normed)
            yield layer, normed, out, log_scale
            h = out
            if rescale:
                rms = float(out.pow(2).mean().sqrt())
                if rms > 0 and math.isfinite(rms):
                    h = out / rms
                    log_scale += math.log(rms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The faithful output of the last layer (no renormalisation), ``[n, d]``."""
        h = x.to(self.dtype)
        for _, _, h, _ in self.trace(h, renormalize=False):
            pass
        return h


DTYPES = {"float64": torch.float64, "float32": torch.float32}


def build(spec) -> DecomposedMLP:
    return DecomposedMLP(spec.width, spec.depth, spec.rc, spec.rs, spec.nl, spec.eps, spec.seed,
                         DTYPES[spec.dtype])
