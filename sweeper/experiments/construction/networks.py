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
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from sweeper import seeds
from sweeper.experiments.construction.solve import SolveInfo, solve_linear, solve_linear_output, solve_multilinear
from sweeper.experiments.construction.spec import ConstructionSpec
from sweeper.experiments.construction.targets import build_layers, init_uniform
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
    """The target network (float32, seeded init): the spec's entry of the target registry."""
    net = nn.Sequential(*build_layers(spec, in_shape, num_classes))
    with torch.no_grad():
        init_uniform(net, generator(spec.seed, 0))
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


#: Bytes one float64 intermediate of a block may take during calibration (and, at float32 width, one
#: chunk of evaluation): CIFAR-sized blocks are m ≈ P channels at full resolution, megabytes per image.
CHUNK_BYTES = 2**28


def chunk_rows(model: nn.Module, x: torch.Tensor, itemsize: int = 8, most: int | None = None) -> int:
    """Rows of `x` per chunk so that the widest layer of `model` (channels x the input's spatial
    size, an upper bound) stays within CHUNK_BYTES."""
    widths = [m.num_features for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    widths += [m.out_features if isinstance(m, nn.Linear) else m.out_channels
               for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    per_row = max(widths + [1]) * max(1, math.prod(x.shape[2:])) * itemsize
    rows = max(1, CHUNK_BYTES // per_row)
    return min(rows, most) if most else rows


def split(x: torch.Tensor, rows: int) -> list[torch.Tensor]:
    return [x[i:i + rows] for i in range(0, len(x), rows)]


class ChannelStats:
    """Per-channel mean, variance (unbiased, as torch.var), min and max of activations seen chunk by
    chunk (Chan et al.'s pairwise merge). One chunk gives exactly torch's own mean and var, so a
    calibration set that fits one chunk gives the same bits as an unchunked computation."""

    def __init__(self) -> None:
        self.n, self.chunks = 0, 0

    def add(self, z: torch.Tensor) -> None:
        zc = _channels(z)
        n, mean = zc.shape[1], zc.mean(1)
        lo, hi = zc.amin(1), zc.amax(1)
        if self.chunks == 0:
            self.var1 = zc.var(1)
            self.mean, self.m2, self.lo, self.hi = mean, ((zc - mean[:, None]) ** 2).sum(1), lo, hi
        else:
            m2 = ((zc - mean[:, None]) ** 2).sum(1)
            total = self.n + n
            delta = mean - self.mean
            self.mean = self.mean + delta * (n / total)
            self.m2 = self.m2 + m2 + delta * delta * (self.n * n / total)
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
        self.n += n
        self.chunks += 1

    @property
    def var(self) -> torch.Tensor:
        return self.var1 if self.chunks == 1 else self.m2 / max(self.n - 1, 1)

    def spread(self, scale: torch.Tensor) -> torch.Tensor:
        """max |scale_k (z_k - mean_k)| per unit."""
        return scale.abs() * torch.maximum(self.hi - self.mean, self.mean - self.lo)


def _stats(f: Callable[[torch.Tensor], torch.Tensor], chunks: list[torch.Tensor]) -> ChannelStats:
    acc = ChannelStats()
    for c in chunks:
        acc.add(f(c))
    return acc


@torch.no_grad()
def construct_block(target_layer: nn.Module, block: BNBlock, x: torch.Tensor, spec: ConstructionSpec,
                    rows: int | None = None) -> SolveInfo:
    """Set every BN of `block` (float64, in place) so that block(x') ≈ target_layer(x') for every
    input x' (exactly, up to the activation's linearisation, when the solve is exact); `x` is the
    calibration batch of block inputs, seen `rows` at a time. Returns the solver's report.

    With spec.output_gamma == "solve" the block's last BN scale is one more unknown of the scale
    equations (diag(g) B diag(e_D) ... A = W), as in the paper, which uses every γ; with "fixed" it
    only undoes the gains of the linear-region placement (1 / gain)."""
    region = ACTIVATIONS[spec.activation].linear_region
    eps_lin = linear_half_width(spec)
    Wt = _flat(target_layer.weight)
    mats = [_flat(wl.weight) for wl in block.weights()]
    A, Rs, B = mats[0], mats[1:-1], mats[-1]
    solve_output = spec.output_gamma == "solve"
    if block.depth == 1 and not solve_output:
        e, info = solve_linear(A, B, Wt, spec.solver, spec.dense_limit, spec.tol, spec.lsqr_iters)
        es, g = [e], None
    elif block.depth == 1:
        (e, g), info = solve_linear_output(A, B, Wt, spec.solver, spec.dense_limit, spec.tol, spec.lsqr_iters,
                                           spec.lm_iters)
        es = [e]
    else:
        es, info = solve_multilinear(A, Rs, B, Wt, spec.lm_iters, spec.tol, spec.dense_limit,
                                     output_scale=solve_output)
        es, g = (es[:-1], es[-1]) if solve_output else (es, None)
    mods, norms = list(block), block.norms()
    wpos = [i for i, mod in enumerate(mods) if isinstance(mod, (nn.Linear, nn.Conv2d))]
    chunks = split(x, rows or len(x))

    def prefix(upto: int) -> Callable[[torch.Tensor], torch.Tensor]:
        return nn.Sequential(*mods[:upto + 1])  # the block up to and including module `upto`

    gain = 1.0
    for l in range(block.depth):
        st = _stats(prefix(wpos[l]), chunks)  # BN l sees the real forward pass through BNs < l
        mean, var = st.mean, st.var
        d = torch.from_numpy(es[l])
        spread = st.spread(d)  # |e_k (z_k - mean_k)| range per unit
        top = max(float(spread.max()), 1e-300)
        if region.mode == "positive":
            lam = max(1.0, region.onset) / top
            shift = region.onset + spec.shift_margin * lam * spread
        else:
            lam = eps_lin / top
            shift = torch.zeros_like(spread)
        _set_bn(norms[l], mean, var, lam * d, shift)
        gain *= lam * region.slope
    out = prefix(wpos[block.depth])
    vs, ts = _stats(out, chunks), _stats(target_layer, chunks)
    v_mean, v_var, t_mean = vs.mean, vs.var, ts.mean
    if spec.refit_output:  # per-unit regression of the target's pre-activation on the block's output
        vt = torch.zeros_like(v_mean)
        vv = torch.zeros_like(v_mean)
        for c in chunks:
            v0 = _channels(out(c)) - v_mean[:, None]
            t0 = _channels(target_layer(c)) - t_mean[:, None]
            vt, vv = vt + (v0 * t0).sum(1), vv + (v0 * v0).sum(1)
        scale = vt / vv.clamp_min(1e-300)
    elif g is not None:
        scale = torch.from_numpy(g) / gain
    else:
        scale = torch.full_like(v_mean, 1.0 / gain)
    _set_bn(norms[-1], v_mean, v_var, scale, t_mean)
    return info


@torch.no_grad()
def construct(target: nn.Sequential, source: nn.Sequential, x_calib: torch.Tensor,
              spec: ConstructionSpec) -> list[SolveInfo]:
    """Set the source's BN layers block by block (in float64; the source is left in float64, eval
    mode). Each block is calibrated on the source's own outputs of the blocks before it, in chunks
    small enough for CIFAR-sized blocks (one chunk on digits)."""
    t64 = copy.deepcopy(target).double().eval()
    source.double().eval()
    h = x_calib.double()
    infos = []
    for tmod, smod in zip(t64, source):
        rows = chunk_rows(smod, h)
        if isinstance(smod, BNBlock):
            infos.append(construct_block(tmod, smod, h, spec, rows))
        h = torch.cat([smod(c) for c in split(h, rows)])
    return infos


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    model.eval()
    dtype = next(model.parameters()).dtype
    rows = chunk_rows(model, x, torch.finfo(dtype).bits // 8, most=chunk)
    return torch.cat([model(c.to(dtype)) for c in split(x, rows)])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (Frobenius, float64)."""
    a, b = a.double(), b.double()
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b).clamp_min(1e-300))

