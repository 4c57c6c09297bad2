"""Inputs registry of the decomposed-BN experiment: the batch at layer 0, ``[n, d]`` float64."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from sweeper import seeds
from sweeper.errors import SweeperError
from sweeper.experiments.decomposed.network import INPUT_STREAM, PROJECTION_STREAM, SELECTION_STREAM
from sweeper.registry import Registry

InputBuilder = Callable[["DecomposedSpec", "str | None"], torch.Tensor]  # -> [n, d] float64
INPUTS: Registry[InputBuilder] = Registry("inputs")


@INPUTS.register("gaussian")
def _gaussian_inputs(spec: "DecomposedSpec", data_root: str | None) -> torch.Tensor:
    """n vectors N(0, s² I_d); with input_corr = ρ > 0 they share a common component,
    x_i = s (sqrt(ρ) z_0 + sqrt(1-ρ) z_i), so their pairwise cosines are ≈ ρ."""
    g = torch.Generator().manual_seed(seeds.derived(spec.seed, INPUT_STREAM))
    z = torch.randn(spec.batch + 1, spec.width, generator=g, dtype=torch.float64)
    rho = spec.input_corr
    x = math.sqrt(rho) * z[:1] + math.sqrt(1.0 - rho) * z[1:]
    return spec.input_scale * x


@INPUTS.register("outlier")
def _outlier_inputs(spec: "DecomposedSpec", data_root: str | None) -> torch.Tensor:
    """The paper's limiting configuration, to test its stability: inputs 0..n-2 equal a vector
    a ~ N(0, I_d), input n-1 is b ⟂ a with ||b|| = (n-1) ||a||; then every input gets independent
    N(0, input_noise²) noise per entry, and one global factor sets the RMS entry to input_scale."""
    g = torch.Generator().manual_seed(seeds.derived(spec.seed, INPUT_STREAM))
    z = torch.randn(spec.batch + 2, spec.width, generator=g, dtype=torch.float64)
    a, b = z[0], z[1]
    if spec.width > 1:
        b = b - (b @ a) / (a @ a) * a
    b = b * ((spec.batch - 1) * a.norm() / b.norm())
    x = torch.cat([a.expand(spec.batch - 1, -1), b[None]]) + spec.input_noise * z[2:]
    return spec.input_scale * x / x.pow(2).mean().sqrt()


def _image_inputs(name: str) -> InputBuilder:
    def build(spec: "DecomposedSpec", data_root: str | None) -> torch.Tensor:
        """n training images chosen by the seed, scaled to [0, 1], flattened, mapped to width d by
        a fixed projection P ~ N(0, 1/D), then one global factor sets the mean squared entry to
        input_scale² (relative norms and angles are the images')."""
        from sweeper.data import load_arrays  # the package's one loader (cached per process)

        x_train = load_arrays(name, data_root)[0]
        if len(x_train) < spec.batch:
            raise SweeperError(f"{name} has {len(x_train)} training images, fewer than batch", "batch")
        rng = np.random.default_rng(seeds.derived(spec.seed, SELECTION_STREAM))
        idx = np.sort(rng.choice(len(x_train), size=spec.batch, replace=False))
        x = x_train[torch.from_numpy(idx)].reshape(spec.batch, -1).to(torch.float64) / 255.0
        D = x.shape[1]
        g = torch.Generator().manual_seed(seeds.derived(spec.seed, PROJECTION_STREAM, spec.width))
        P = torch.randn(D, spec.width, generator=g, dtype=torch.float64) / math.sqrt(D)
        h = x @ P
        rms = float(h.pow(2).mean().sqrt())
        return spec.input_scale * h / rms

    return build


INPUTS.add("digits", _image_inputs("digits"))
INPUTS.add("cifar10", _image_inputs("cifar10"), "cifar-10")


def inputs(spec: "DecomposedSpec", data_root: str | None = None) -> torch.Tensor:
    """The input batch, layer 0, as ``[n, d]`` float64."""
    return INPUTS[spec.inputs](spec, data_root)
