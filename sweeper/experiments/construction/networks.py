"""The networks of Burkholz's construction (torch): the target, the random source whose weight
layers are BNBlocks, and the construction that sets the source's BN layers.

A target weight layer ``y = act(W x + b)`` (W: n_out x n_in, P = n_out * n_in weights) becomes a
block of random weight layers with BatchNorm between them,

    A (m x n_in), BN(m), act, [R_l (m x m), BN(m), act] * (D - 1), B (n_out x m), BN(n_out)

followed by the target's own activation. In eval mode (running statistics set from calibration
data) BN unit k is an affine map ``e_k (z_k - mean_k) + beta_k`` with ``e_k = gamma_k / sigma_k``.
Each inner BN shift puts its activation where the activation is (close to) linear (its registry
entry's `linear_region`: for ReLU-like activations far enough into the positive region; for tanh /
sigmoid a small range around 0), so the block is the linear map ``B diag(e_D) R_{D-1} ... diag(e_1) A``
plus constants that the following BN removes; making it equal W is the scale equations of
`solve`. The last BN of the block undoes the gains (activation slopes and the per-layer scales
chosen for the linear region) and restores the target's bias from its pre-activation mean on
calibration data. A k x k convolution is the same with A a random k x k convolution and R, B
random 1x1 convolutions (P = c_out * c_in * k²). Every non-BN weight stays at its random
initialisation.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from sweeper import seeds
from sweeper.experiments.construction.solve import SolveInfo, solve_linear, solve_multilinear
from sweeper.experiments.construction.spec import ConstructionSpec
from sweeper.nn.activations import ACTIVATIONS, activation
from sweeper.nn.init import WEIGHT_INITS

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seeds.stream(seed, stream))


def _source_init(name: str, weight: torch.Tensor, g: torch.Generator) -> None:
    """A random source weight from the shared registry at its default (kaiming) scale."""
    draw, _ = WEIGHT_INITS[name]
    draw(weight, g)


def build_target(spec: ConstructionSpec, in_shape: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    """The target network (float32, seeded init): an MLP or a small CNN with the spec's activation."""
    c, h, w = in_shape
    if spec.target == "mlp":
        layers: list[nn.Module] = [nn.Flatten()]
        width = c * h * w
        for _ in range(spec.hidden_layers):
            layers += [nn.Linear(width, spec.hidden), activation(spec.activation)]
            width = spec.hidden
        layers.append(nn.Linear(width, num_classes))
    else:
        k, ch = spec.kernel_size, spec.cnn_channels
        layers = [nn.Conv2d(c, ch, k, padding=k // 2), activation(spec.activation), nn.MaxPool2d(2),
                  nn.Conv2d(ch, ch, k, padding=k // 2), activation(spec.activation),
                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, num_classes)]
    net = nn.Sequential(*layers)
    g = generator(spec.seed, 0)
    with torch.no_grad():
        for mod in net:
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_uniform_(mod.weight, a=math.sqrt(5), generator=g)
                bound = 1 / math.sqrt(mod.weight[0].numel())
                mod.bias.uniform_(-bound, bound, generator=g)
    return net


class BNBlock(nn.Sequential):
    """One target weight layer as random weight layers with BN between them:
    A, BN, act, [R, BN, act] * (depth - 1), B, BN. Only the BN layers are set by the construction."""

    def __init__(self, layer: nn.Module, width: int, depth: int, act_name: str):
        conv = isinstance(layer, nn.Conv2d)
        n_in = layer.in_channels if conv else layer.in_features
        n_out = layer.out_channels if conv else layer.out_features
        Norm = nn.BatchNorm2d if conv else nn.BatchNorm1d

        def weight(i: int, o: int, first: bool) -> nn.Module:
            if not conv:
                return nn.Linear(i, o, bias=False)
            if first:
                return nn.Conv2d(i, o, layer.kernel_size, layer.stride, layer.padding, layer.dilation, bias=False)
            return nn.Conv2d(i, o, 1, bias=False)

        mods: list[nn.Module] = []
        widths = [n_in] + [width] * depth + [n_out]
        for l in range(depth + 1):
            mods += [weight(widths[l], widths[l + 1], l == 0), Norm(widths[l + 1])]
            if l < depth:
                mods.append(activation(act_name))
        super().__init__(*mods)
        self.depth, self.width, self.conv = depth, width, conv

    def weights(self) -> list[nn.Module]:
        return [m for m in self if isinstance(m, (nn.Linear, nn.Conv2d))]

    def norms(self) -> list[nn.Module]:
        return [m for m in self if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def weight_layers(net: nn.Sequential) -> list[int]:
    return [i for i, m in enumerate(net) if isinstance(m, (nn.Linear, nn.Conv2d))]


def layer_widths(target: nn.Sequential, width_ratio: float, depth: int) -> list[int]:
    """BN width m per target weight layer: ceil(width_ratio * P / depth)."""
    return [max(1, math.ceil(width_ratio * target[i].weight.numel() / depth)) for i in weight_layers(target)]


def build_source(target: nn.Sequential, spec: ConstructionSpec) -> nn.Sequential:
    """The random source network: the target with every weight layer replaced by a BNBlock (random
    weights from `spec.weight_init`, seeded), every other module copied. BN starts at γ=1, β=0."""
    widths = layer_widths(target, spec.width_ratio, spec.source_depth)
    g = generator(spec.seed, 1)
    mods, w = [], iter(widths)
    for mod in target:
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            block = BNBlock(mod, next(w), spec.source_depth, spec.activation)
            for wl in block.weights():
                _source_init(spec.weight_init, wl.weight, g)
            mods.append(block)
        else:  # activations, pooling, flatten: parameter-free, copied as they are
            mods.append(copy.deepcopy(mod))
    return nn.Sequential(*mods)


def _channels(z: torch.Tensor) -> torch.Tensor:
    """(C, N*...) view of a batch of activations: channel statistics as BN computes them."""
    return z.transpose(0, 1).reshape(z.shape[1], -1)


def _flat(weight: torch.Tensor) -> np.ndarray:
    return weight.detach().double().reshape(weight.shape[0], -1).numpy()


@torch.no_grad()
def _set_bn(bn: nn.Module, mean: torch.Tensor, var: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Eval-mode BN becomes scale * (z - mean) + shift."""
    bn.running_mean.copy_(mean)
    bn.running_var.copy_(var)
    bn.weight.copy_(scale * torch.sqrt(var + bn.eps))
    bn.bias.copy_(shift)
    bn.num_batches_tracked.fill_(1)


def linear_half_width(spec: ConstructionSpec) -> float:
    """ε for origin-mode activations: spec.linear_scale, or the dtype-balanced default when 0."""
    region = ACTIVATIONS[spec.activation].linear_region
    return spec.linear_scale if spec.linear_scale > 0 else region.half_width(DTYPES[spec.dtype])


@torch.no_grad()
def construct_block(target_layer: nn.Module, block: BNBlock, x: torch.Tensor, spec: ConstructionSpec) -> SolveInfo:
    """Set every BN of `block` (float64, in place) so that block(x') ≈ target_layer(x') for every
    input x' (exactly, up to the activation's linearisation, when the solve is exact); `x` is the
    calibration batch of block inputs. Returns the solver's report."""
    region = ACTIVATIONS[spec.activation].linear_region
    eps_lin = linear_half_width(spec)
    Wt = _flat(target_layer.weight)
    mats = [_flat(wl.weight) for wl in block.weights()]
    A, Rs, B = mats[0], mats[1:-1], mats[-1]
    if block.depth == 1:
        e, info = solve_linear(A, B, Wt, spec.solver, spec.dense_limit, spec.tol, spec.lsqr_iters)
        es = [e]
    else:
        es, info = solve_multilinear(A, Rs, B, Wt, spec.lm_iters, spec.tol, spec.dense_limit)
    weights, norms = block.weights(), block.norms()
    acts = [m for m in block if not isinstance(m, (nn.Linear, nn.Conv2d, nn.modules.batchnorm._BatchNorm))]
    z = weights[0](x)
    gain = 1.0
    for l in range(block.depth):
        zc = _channels(z)
        mean, var = zc.mean(1), zc.var(1)
        d = torch.from_numpy(es[l])
        spread = (d[:, None] * (zc - mean[:, None])).abs().amax(1)  # |e_k (z_k - mean_k)| range per unit
        top = max(float(spread.max()), 1e-300)
        if region.mode == "positive":
            lam = max(1.0, region.onset) / top
            shift = region.onset + spec.shift_margin * lam * spread
        else:
            lam = eps_lin / top
            shift = torch.zeros_like(spread)
        _set_bn(norms[l], mean, var, lam * d, shift)
        gain *= lam * region.slope
        z = weights[l + 1](acts[l](norms[l](z)))
    vc = _channels(z)
    v_mean, v_var = vc.mean(1), vc.var(1)
    tc = _channels(target_layer(x))
    t_mean = tc.mean(1)
    if spec.refit_output:
        v0, t0 = vc - v_mean[:, None], tc - t_mean[:, None]
        scale = (v0 * t0).sum(1) / (v0 * v0).sum(1).clamp_min(1e-300)
    else:
        scale = torch.full_like(v_mean, 1.0 / gain)
    _set_bn(norms[-1], v_mean, v_var, scale, t_mean)
    return info


@torch.no_grad()
def construct(target: nn.Sequential, source: nn.Sequential, x_calib: torch.Tensor,
              spec: ConstructionSpec) -> list[SolveInfo]:
    """Set the source's BN layers block by block (in float64; the source is left in float64, eval
    mode). Each block is calibrated on the source's own outputs of the blocks before it."""
    t64 = copy.deepcopy(target).double().eval()
    source.double().eval()
    h = x_calib.double()
    infos = []
    for tmod, smod in zip(t64, source):
        if isinstance(smod, BNBlock):
            infos.append(construct_block(tmod, smod, h, spec))
        h = smod(h)
    return infos


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    model.eval()
    dtype = next(model.parameters()).dtype
    return torch.cat([model(x[i:i + chunk].to(dtype)) for i in range(0, len(x), chunk)])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (Frobenius, float64)."""
    a, b = a.double(), b.double()
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b).clamp_min(1e-300))

