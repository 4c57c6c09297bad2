"""Burkholz (ICLR 2024): BatchNorm's γ and β alone turn a random network into any target network.

A target weight layer ``y = act(W x + b)`` (W: n_out x n_in, P = n_out * n_in weights) becomes a
block of random weight layers with BatchNorm between them,

    A (m x n_in), BN(m), act, [R_l (m x m), BN(m), act] * (D - 1), B (n_out x m), BN(n_out)

followed by the target's own activation. In eval mode (running statistics set from calibration
data) BN unit k is an affine map ``e_k (z_k - mean_k) + beta_k`` with ``e_k = gamma_k / sigma_k``.
Each inner BN shift puts its activation where the activation is (close to) linear (for ReLU-like
activations: far enough into the positive region; for tanh / sigmoid: a small range around 0), so
the block is the linear map ``B diag(e_D) R_{D-1} ... diag(e_1) A`` plus constants that the
following BN removes. Making it equal W is

* D = 1: ``B diag(e) A = W``: P linear equations in m unknowns with the Khatri-Rao matrix
  ``M[(i, j), k] = B_ik A_kj``. Solved by minimum-norm least squares in float64: dense LAPACK
  (gelsd, whose singular values give the condition number for free) when M fits, otherwise
  matrix-free LSQR on a LinearOperator (M is never formed; its normal matrix is
  ``(BᵀB) ∘ (AAᵀ)`` and ``Mᵀ vec(W) = diag(Bᵀ W Aᵀ)``).
* D >= 2: multilinear in (e_1, ..., e_D), with D - 1 scale symmetries, so about D*m - (D-1) >= P
  unknowns suffice: solved by Levenberg-Marquardt whose Gauss-Newton matrix has the same
  Hadamard structure block by block, ``(L_lᵀ L_l') ∘ (Rt_l Rt_l'ᵀ)``.

The last BN of the block undoes the gains (activation slopes and the per-layer scales chosen for
the linear region) and restores the target's bias from its pre-activation mean on calibration
data. A k x k convolution is the same with A a random k x k convolution and R, B random 1x1
convolutions (P = c_out * c_in * k²). The result is a genuine torch network (nn.BatchNorm1d/2d whose
weight, bias and running statistics are set) evaluated in eval mode; every non-BN weight stays at
its random initialisation.

`run(spec)` trains a small target on digits, builds and constructs the source, trains the same
random source BN-only with SGD/Adam as the baseline, and returns one row of scalars plus tables.
No Ray here; a pure, seeded function of its spec.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.sparse.linalg as spla
import torch
import torch.nn.functional as F
from torch import nn

from sweeper.errors import SweeperError
from sweeper.spec import Spec
from sweeper.nn.activations import ACTIVATIONS, activation
from sweeper.nn.init import WEIGHT_INITS

# --------------------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------------------
TARGETS = ("mlp", "cnn")
SOLVERS = ("auto", "dense", "lsqr")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
SGD_OPTIMIZERS = ("adam", "sgd")
SGD_OBJECTIVES = ("distill", "labels")


@dataclass(frozen=True)
class ConstructionSpec(Spec):
    """One construction trial. Every field is a plain int/float/str/bool with a default."""

    experiment: ClassVar[str] = "construction"

    target: str = "mlp"  # "mlp" | "cnn"
    hidden: int = 16  # MLP hidden width
    hidden_layers: int = 1  # MLP hidden layers
    cnn_channels: int = 8  # CNN: conv(k x k, C -> c), act, maxpool 2, conv(c -> c), act, avgpool, linear
    kernel_size: int = 3
    width_ratio: float = 1.2  # total BN width per target layer / its weight count P (D * m / P)
    source_depth: int = 1  # D: BN layers per target layer (1 = the linear construction)
    activation: str = "relu"  # target and source activation (sweeper.nn.activations)
    weight_init: str = "normal"  # random source weights: normal | uniform | signed_constant (kaiming scale)
    dataset: str = "digits"
    seed: int = 0
    target_epochs: int = 30  # Adam epochs for the target (seconds on digits)
    target_lr: float = 0.01
    batch_size: int = 64
    calibration_size: int = 0  # training inputs used for running statistics; 0 = all
    shift_margin: float = 2.0  # ReLU-like: shift = onset + margin * (calibration range of the unit)
    linear_scale: float = 0.0  # tanh/sigmoid: half-width ε of the pre-activation range; 0 = auto per dtype
    solver: str = "auto"  # D = 1: auto | dense | lsqr (auto: dense when P * m <= dense_limit)
    dense_limit: int = 8_000_000  # largest P * m (or Gram size²) handled densely
    lsqr_iters: int = 20_000
    lm_iters: int = 100  # Levenberg-Marquardt iterations (D >= 2)
    tol: float = 1e-13  # relative weight residual at which the solvers stop
    refit_output: bool = False  # fit each block's output BN scale by regression (helps below m = P)
    dtype: str = "float32"  # dtype the constructed and target networks are evaluated in
    sgd_epochs: int = 20  # BN-only baseline on the same random source; 0 = untrained (γ=1, β=0)
    sgd_lr: float = 0.01
    sgd_optimizer: str = "adam"  # adam | sgd (momentum 0.9)
    sgd_objective: str = "distill"  # distill (MSE to target logits) | labels (cross-entropy)

    def __post_init__(self) -> None:
        def bad(field: str, message: str) -> None:
            raise SweeperError(message, field)

        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            want = {"int": int, "float": (int, float), "str": str, "bool": bool}[f.type]
            if not isinstance(v, want) or (f.type != "bool" and isinstance(v, bool)):
                bad(f.name, f"expected {f.type}, got {v!r}")
        choices = {"target": TARGETS, "solver": SOLVERS, "dtype": tuple(DTYPES),
                   "sgd_optimizer": SGD_OPTIMIZERS, "sgd_objective": SGD_OBJECTIVES,
                   "weight_init": tuple(SOURCE_INITS)}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                bad(name, f"unknown {name} {getattr(self, name)!r}; valid choices: {', '.join(sorted(valid))}")
        try:
            act = ACTIVATIONS.canonical(self.activation)
        except SweeperError as e:
            raise e.at("activation") from None
        if act not in LINEAR_REGIONS:
            bad("activation", f"no linear region known for {act!r}; supported: {', '.join(sorted(LINEAR_REGIONS))}")
        positive = {"hidden": self.hidden, "hidden_layers": self.hidden_layers, "cnn_channels": self.cnn_channels,
                    "kernel_size": self.kernel_size, "width_ratio": self.width_ratio,
                    "source_depth": self.source_depth, "batch_size": self.batch_size, "target_lr": self.target_lr,
                    "dense_limit": self.dense_limit,
                    "lsqr_iters": self.lsqr_iters, "tol": self.tol, "sgd_lr": self.sgd_lr}
        for name, v in positive.items():
            if not v > 0:
                bad(name, f"must be > 0, got {v!r}")
        for name in ("target_epochs", "sgd_epochs", "calibration_size", "lm_iters", "seed", "linear_scale"):
            if getattr(self, name) < 0:
                bad(name, f"must be >= 0, got {getattr(self, name)!r}")
        if self.shift_margin < 1:
            bad("shift_margin", f"must be >= 1 (the shifted range must stay inside the linear region), got {self.shift_margin!r}")
        if self.kernel_size % 2 != 1:
            bad("kernel_size", f"must be odd ('same' padding), got {self.kernel_size}")


# --------------------------------------------------------------------------------------------------
# Random source weights: the shared weight-distribution registry (sweeper.nn.init) at its default
# parameters, i.e. kaiming scale (fan-in std sqrt(2 / fan_in)) for normal, uniform, signed_constant.
# --------------------------------------------------------------------------------------------------
def _shared_init(name: str) -> Callable[[torch.Tensor, torch.Generator], None]:
    draw, _ = WEIGHT_INITS[name]
    return lambda w, g: draw(w, g)


SOURCE_INITS: dict[str, Callable[[torch.Tensor, torch.Generator], None]] = {
    name: _shared_init(name)
    for name in ("normal", "kaiming_normal", "uniform", "kaiming_uniform", "signed_constant")
}


# --------------------------------------------------------------------------------------------------
# Linear regions: where each activation is (close to) affine. mode "positive": act(u) ≈ u for
# u >= onset (exact for ReLU, leaky ReLU, ELU and torch's Softplus beyond its threshold 20; GELU's
# error at 6 is ~6e-9, SiLU's at 20 ~4e-8); mode "origin": act(u) ≈ act(0) + slope * u for |u| small
# (odd activations around 0, the error is cubic: tanh u - u ≈ -u³/3).
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LinearRegion:
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


LINEAR_REGIONS: dict[str, LinearRegion] = {
    "relu": LinearRegion("positive", 0.0, 1.0),
    "leaky_relu": LinearRegion("positive", 0.0, 1.0),
    "elu": LinearRegion("positive", 0.0, 1.0),
    "gelu": LinearRegion("positive", 6.0, 1.0),
    "silu": LinearRegion("positive", 20.0, 1.0),
    "softplus": LinearRegion("positive", 20.0, 1.0),
    "tanh": LinearRegion("origin", 0.0, 1.0, cubic=1 / 3),
    "sigmoid": LinearRegion("origin", 0.0, 0.25, cubic=1 / 12, offset=2.0),
    "identity": LinearRegion("origin", 0.0, 1.0),
}


# --------------------------------------------------------------------------------------------------
# Solvers (numpy float64). A: m x n_in, B: n_out x m, W: n_out x n_in, R_l: m x m.
# --------------------------------------------------------------------------------------------------
@dataclass
class SolveInfo:
    method: str
    residual: float  # ||F(e) - W||_F / ||W||_F
    condition_number: float  # σ_max / σ_r of the (Jacobian) matrix, r its generic rank
    condition_method: str  # "svd" | "gram" | "lsqr_estimate"
    iterations: int
    seconds: float


def khatri_rao(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """The P x m matrix M with M[(i, j), k] = B[i, k] * A[k, j], so that M @ e = vec(B diag(e) A)."""
    return (B[:, None, :] * A.T[None, :, :]).reshape(B.shape[0] * A.shape[1], A.shape[0])


def scales_gram(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """MᵀM = (BᵀB) ∘ (AAᵀ), the m x m normal matrix, without forming M."""
    return (B.T @ B) * (A @ A.T)


def _condition_from_gram(G: np.ndarray, rank: int) -> float:
    ev = np.linalg.eigvalsh(G)[::-1]
    rank = max(1, min(rank, len(ev)))
    lo = ev[rank - 1]
    return float(math.sqrt(ev[0] / lo)) if lo > 0 else float("inf")


def solve_linear(A: np.ndarray, B: np.ndarray, W: np.ndarray, method: str = "auto",
                 dense_limit: int = 8_000_000, tol: float = 1e-13, iter_lim: int = 20_000) -> tuple[np.ndarray, SolveInfo]:
    """Minimum-norm least-squares scales e with B diag(e) A ≈ W (float64).

    dense: LAPACK gelsd on the P x m Khatri-Rao matrix (its singular values give the condition
    number). lsqr: matrix-free LSQR (started at 0, so it converges to the minimum-norm solution);
    the condition number comes from the m x m Gram (BᵀB)∘(AAᵀ) when m² <= dense_limit, else from
    LSQR's own estimate."""
    A, B, W = (np.asarray(a, dtype=np.float64) for a in (A, B, W))
    m, n_in = A.shape
    n_out = B.shape[0]
    P = n_out * n_in
    w = W.reshape(-1)
    if method == "auto":
        method = "dense" if P * m <= dense_limit else "lsqr"
    t0 = time.perf_counter()
    rank = min(P, m)
    if method == "dense":
        M = khatri_rao(A, B)
        e, _, _, s = scipy.linalg.lstsq(M, w, lapack_driver="gelsd")
        cond = float(s[0] / s[rank - 1]) if s[rank - 1] > 0 else float("inf")
        cmethod, iters = "svd", 1
    elif method == "lsqr":
        op = spla.LinearOperator(
            (P, m), dtype=np.float64,
            matvec=lambda e: ((B * np.ravel(e)) @ A).reshape(-1),
            rmatvec=lambda v: ((B.T @ np.reshape(v, (n_out, n_in))) * A).sum(axis=1),
        )
        out = spla.lsqr(op, w, atol=tol, btol=tol, conlim=1e16, iter_lim=iter_lim)
        e, iters = out[0], int(out[2])
        if m * m <= dense_limit:
            cond, cmethod = _condition_from_gram(scales_gram(A, B), rank), "gram"
        else:
            cond, cmethod = float(out[6]), "lsqr_estimate"
    else:
        raise SweeperError(f"unknown solver {method!r}; valid choices: auto, dense, lsqr")
    seconds = time.perf_counter() - t0
    residual = float(np.linalg.norm((B * e) @ A - W) / max(np.linalg.norm(W), 1e-300))
    return e, SolveInfo(method, residual, cond, cmethod, iters, seconds)


def _chain(A: np.ndarray, Rs: list[np.ndarray], B: np.ndarray, es: list[np.ndarray]):
    """Left and right partial products of F = B diag(e_D) R_{D-1} ... R_1 diag(e_1) A:
    F = L_l diag(e_l) Rt_l for every l."""
    D = len(es)
    Rt = [A]
    for l in range(D - 1):
        Rt.append(Rs[l] @ (es[l][:, None] * Rt[l]))
    L = [None] * D
    L[D - 1] = B
    for l in range(D - 2, -1, -1):
        L[l] = (L[l + 1] * es[l + 1][None, :]) @ Rs[l]
    return L, Rt


def multilinear_map(A, Rs, B, es) -> np.ndarray:
    x = A
    for l, e in enumerate(es):
        x = e[:, None] * x
        if l < len(Rs):
            x = Rs[l] @ x
    return B @ x


def _balance(es: list[np.ndarray]) -> list[np.ndarray]:
    """Same product, equal norms per layer (the D - 1 scale symmetries)."""
    norms = np.array([max(np.linalg.norm(e), 1e-300) for e in es])
    geo = float(np.exp(np.mean(np.log(norms))))
    return [e * (geo / n) for e, n in zip(es, norms)]


def _gn_gram(L, Rt) -> np.ndarray:
    D = len(L)
    blocks = [[(L[a].T @ L[b]) * (Rt[a] @ Rt[b].T) for b in range(D)] for a in range(D)]
    return np.block(blocks)


def _gn_grad(L, Rt, r) -> np.ndarray:
    return np.concatenate([((L[l].T @ r) * Rt[l]).sum(axis=1) for l in range(len(L))])


def solve_multilinear(A: np.ndarray, Rs: list[np.ndarray], B: np.ndarray, W: np.ndarray,
                      iters: int = 100, tol: float = 1e-13, dense_limit: int = 8_000_000,
                      es0: list[np.ndarray] | None = None) -> tuple[list[np.ndarray], SolveInfo]:
    """Scales e_1..e_D with B diag(e_D) R_{D-1} ... diag(e_1) A ≈ W by Levenberg-Marquardt.

    Start: every e_l = the same constant, scaled so that ||F|| = ||W|| (a start from the linear
    least-squares fit of e_1 is worse: at m = P it is the ill-conditioned square solve, whose large
    scales then amplify float32 rounding in the network by 100x). Each step solves (JᵀJ + μ I) δ = -Jᵀr, with JᵀJ assembled from m x m Hadamard
    blocks when (D m)² <= dense_limit, else by damped matrix-free LSQR. After each accepted step
    the layers are rebalanced to equal norms (the product does not change)."""
    A, B, W = (np.asarray(a, dtype=np.float64) for a in (A, B, W))
    Rs = [np.asarray(R, dtype=np.float64) for R in Rs]
    D = len(Rs) + 1
    m = A.shape[0]
    n_out, n_in = W.shape
    P, N = n_out * n_in, D * m
    t0 = time.perf_counter()
    normW = max(float(np.linalg.norm(W)), 1e-300)
    dense = N * N <= dense_limit
    if es0 is None:
        ones = [np.ones(m) for _ in range(D)]
        scale = (normW / max(float(np.linalg.norm(multilinear_map(A, Rs, B, ones))), 1e-300)) ** (1 / D)
        es = [scale * e for e in ones]
    else:
        es = [np.asarray(e, dtype=np.float64).copy() for e in es0]

    def cost(es_):
        r_ = multilinear_map(A, Rs, B, es_) - W
        return 0.5 * float(np.sum(r_ * r_)), r_

    c, r = cost(es)
    mu, nu, it, stalled = None, 2.0, 0, 0
    for it in range(1, iters + 1):
        if math.sqrt(2 * c) / normW < tol or stalled >= 3:
            it -= 1
            break
        L, Rt = _chain(A, Rs, B, es)
        g = _gn_grad(L, Rt, r)
        if dense:
            G = _gn_gram(L, Rt)
            if mu is None:
                mu = 1e-3 * float(np.max(np.diag(G)))
        elif mu is None:
            mu = 1e-3 * max(float(np.max(np.sum(Ll * Ll, 0) * np.sum(R * R, 1))) for Ll, R in zip(L, Rt))
        if it == 1:
            mu_max = 1e14 * mu
        accepted = False
        while mu < mu_max:
            if dense:
                Gd = G + mu * np.eye(N)
                try:
                    delta = -scipy.linalg.cho_solve(scipy.linalg.cho_factor(Gd), g)
                except np.linalg.LinAlgError:
                    delta = -np.linalg.lstsq(Gd, g, rcond=None)[0]
                pred = -(g @ delta + 0.5 * delta @ (G @ delta))
            else:
                op = _jacobian_operator(L, Rt, n_out, n_in)
                delta = spla.lsqr(op, -r.reshape(-1), damp=math.sqrt(mu), atol=1e-12, btol=1e-12,
                                  iter_lim=2000)[0]
                Jd = op.matvec(delta)
                pred = -(g @ delta + 0.5 * Jd @ Jd)
            new_es = [e + delta[l * m:(l + 1) * m] for l, e in enumerate(es)]
            new_c, new_r = cost(new_es)
            rho = (c - new_c) / pred if pred > 0 else -1.0
            if rho > 0:
                stalled = stalled + 1 if c - new_c <= 1e-4 * c else 0  # no progress: a (local) minimum
                es, c, r = _balance(new_es), new_c, new_r
                mu *= max(1 / 3, 1 - (2 * rho - 1) ** 3)
                nu = 2.0
                accepted = True
                break
            mu *= nu
            nu *= 2
        if not accepted:
            break
    residual = math.sqrt(2 * c) / normW
    L, Rt = _chain(A, Rs, B, es)
    rank = min(P, N - (D - 1))
    if dense:
        cond, cmethod = _condition_from_gram(_gn_gram(L, Rt), rank), "gram"
    else:
        op = _jacobian_operator(L, Rt, n_out, n_in)
        cond, cmethod = float(spla.lsqr(op, np.zeros(P) + W.reshape(-1), iter_lim=50)[6]), "lsqr_estimate"
    seconds = time.perf_counter() - t0
    return es, SolveInfo("lm-dense" if dense else "lm-lsqr", residual, cond, cmethod, it, seconds)


def _jacobian_operator(L, Rt, n_out, n_in) -> spla.LinearOperator:
    D, m = len(L), L[0].shape[1]

    def matvec(d):
        d = np.ravel(d)
        return sum((L[l] * d[l * m:(l + 1) * m]) @ Rt[l] for l in range(D)).reshape(-1)

    def rmatvec(v):
        return _gn_grad(L, Rt, np.reshape(v, (n_out, n_in)))

    return spla.LinearOperator((n_out * n_in, D * m), matvec=matvec, rmatvec=rmatvec, dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------------
def _generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1009 + stream)


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
    g = _generator(spec.seed, 0)
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


def _weight_layers(net: nn.Sequential) -> list[int]:
    return [i for i, m in enumerate(net) if isinstance(m, (nn.Linear, nn.Conv2d))]


def layer_widths(target: nn.Sequential, width_ratio: float, depth: int) -> list[int]:
    """BN width m per target weight layer: ceil(width_ratio * P / depth)."""
    return [max(1, math.ceil(width_ratio * target[i].weight.numel() / depth)) for i in _weight_layers(target)]


def build_source(target: nn.Sequential, spec: ConstructionSpec) -> nn.Sequential:
    """The random source network: the target with every weight layer replaced by a BNBlock (random
    weights from `spec.weight_init`, seeded), every other module copied. BN starts at γ=1, β=0."""
    widths = layer_widths(target, spec.width_ratio, spec.source_depth)
    g = _generator(spec.seed, 1)
    mods, w = [], iter(widths)
    for mod in target:
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            block = BNBlock(mod, next(w), spec.source_depth, spec.activation)
            for wl in block.weights():
                SOURCE_INITS[spec.weight_init](wl.weight, g)
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
    region = LINEAR_REGIONS[ACTIVATIONS.canonical(spec.activation)]
    return spec.linear_scale if spec.linear_scale > 0 else region.half_width(DTYPES[spec.dtype])


@torch.no_grad()
def construct_block(target_layer: nn.Module, block: BNBlock, x: torch.Tensor, spec: ConstructionSpec) -> SolveInfo:
    """Set every BN of `block` (float64, in place) so that block(x') ≈ target_layer(x') for every
    input x' (exactly, up to the activation's linearisation, when the solve is exact); `x` is the
    calibration batch of block inputs. Returns the solver's report."""
    region = LINEAR_REGIONS[ACTIVATIONS.canonical(spec.activation)]
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


# --------------------------------------------------------------------------------------------------
# Training: the target, and the BN-only baseline
# --------------------------------------------------------------------------------------------------
def _batches(n: int, batch_size: int, g: torch.Generator) -> Iterable[torch.Tensor]:
    perm = torch.randperm(n, generator=g)
    for i in range(0, n, batch_size):
        yield perm[i:i + batch_size]


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    model.eval()
    dtype = next(model.parameters()).dtype
    return torch.cat([model(x[i:i + chunk].to(dtype)) for i in range(0, len(x), chunk)])


def train_target(net: nn.Sequential, x: torch.Tensor, y: torch.Tensor, spec: ConstructionSpec) -> None:
    g = _generator(spec.seed, 2)
    opt = torch.optim.Adam(net.parameters(), lr=spec.target_lr)
    net.train()
    for _ in range(spec.target_epochs):
        for idx in _batches(len(x), spec.batch_size, g):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    net.eval()


@torch.no_grad()
def recalibrate(model: nn.Module, x: torch.Tensor, chunk: int = 4096) -> None:
    """Running statistics = statistics of `x` (cumulative average over chunks)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    dtype = next(model.parameters()).dtype
    for i in range(0, len(x), chunk):
        model(x[i:i + chunk].to(dtype))
    for bn, mom in zip(norms, saved):
        bn.momentum = mom
    model.eval()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (Frobenius, float64)."""
    a, b = a.double(), b.double()
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b).clamp_min(1e-300))


def train_bn_only(source: nn.Sequential, x: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor,
                  x_test: torch.Tensor, y_test: torch.Tensor, teacher_test: torch.Tensor,
                  spec: ConstructionSpec) -> pd.DataFrame:
    """Train only γ and β of `source` (fresh BN: γ=1, β=0; train-mode batch statistics) for
    spec.sgd_epochs; running statistics are recalibrated on the training inputs before each
    evaluation. Returns the per-epoch curve (epoch 0 = untrained)."""
    for p in source.parameters():
        p.requires_grad_(False)
    params = []
    for m in source.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.requires_grad_(True)
            m.bias.requires_grad_(True)
            params += [m.weight, m.bias]
    if spec.sgd_optimizer == "adam":
        opt = torch.optim.Adam(params, lr=spec.sgd_lr)
    else:
        opt = torch.optim.SGD(params, lr=spec.sgd_lr, momentum=0.9)
    g = _generator(spec.seed, 3)
    rows = []

    def evaluate(epoch: int, loss: float | None) -> None:
        recalibrate(source, x)
        if loss is None:  # epoch 0: the untrained network's loss on the training set
            out = logits(source, x)
            loss = float(F.mse_loss(out, teacher) if spec.sgd_objective == "distill" else F.cross_entropy(out, y))
        out = logits(source, x_test)
        rows.append({"epoch": epoch, "train_loss": loss, "test_relative_error": relative_error(out, teacher_test),
                     "test_acc": float((out.argmax(1) == y_test).double().mean())})

    evaluate(0, None)
    for epoch in range(1, spec.sgd_epochs + 1):
        source.train()
        total, count = 0.0, 0
        for idx in _batches(len(x), spec.batch_size, g):
            if len(idx) < 2:
                continue
            opt.zero_grad(set_to_none=True)
            out = source(x[idx])
            if spec.sgd_objective == "distill":
                loss = F.mse_loss(out, teacher[idx])
            else:
                loss = F.cross_entropy(out, y[idx])
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()) * len(idx), count + len(idx)
        evaluate(epoch, total / max(count, 1))
    curve = pd.DataFrame(rows)
    return curve.astype({"epoch": "int64", "train_loss": "float64", "test_relative_error": "float64",
                         "test_acc": "float64"})


# --------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def layer_report(target: nn.Sequential, source: nn.Sequential, x: torch.Tensor,
                 spec: ConstructionSpec) -> list[dict]:
    """Per target weight layer, on inputs x: the block's error given the target's own layer input
    (local), the error of the network up to and including it (cumulative), and the fraction of the
    block's inner pre-activations outside the linear region."""
    region = LINEAR_REGIONS[ACTIVATIONS.canonical(spec.activation)]
    eps_lin = linear_half_width(spec)
    target.eval()
    source.eval()
    dtype = next(source.parameters()).dtype
    t, s = x.to(dtype), x.to(dtype)
    out = []
    for i, (tmod, smod) in enumerate(zip(target, source)):
        if isinstance(smod, BNBlock):
            local = relative_error(smod(t), tmod(t))
            outside, total = 0, 0
            h = s
            for mod in smod:
                if not isinstance(mod, (nn.Linear, nn.Conv2d, nn.modules.batchnorm._BatchNorm)):
                    if region.mode == "positive":
                        outside += int((h < region.onset).sum())
                    else:
                        outside += int((h.abs() > 10 * eps_lin).sum())
                    total += h.numel()
                h = mod(h)
            t, s = tmod(t), h
            out.append({"module": i, "local_rel_error": local, "cumulative_rel_error": relative_error(s, t),
                        "outside_linear_frac": outside / max(total, 1)})
        else:
            t, s = tmod(t), smod(s)
    return out


LAYER_COLUMNS = {
    "layer": "int64", "kind": "str", "n_out": "int64", "n_in": "int64", "P": "int64", "m": "int64",
    "source_depth": "int64", "total_width": "int64", "dof": "int64", "width_ratio_actual": "float64",
    "solver_used": "str", "iterations": "int64", "weight_residual": "float64", "condition_number": "float64",
    "condition_method": "str", "solve_seconds": "float64", "local_rel_error": "float64",
    "cumulative_rel_error": "float64", "outside_linear_frac": "float64",
}


# The trials row of `run`: column -> type (declared up front so every trial shares one schema).
# width_ratio and source_depth repeat the spec fields of the same name (same values).
ROW_COLUMNS: dict[str, type] = {
    "width_ratio": float, "source_depth": int,
    "P": int,  # target weights, summed over target layers (biases excluded)
    "m": int,  # total BN width of the source (D * m per target layer, summed; output BNs excluded)
    "m_over_P": float, "dof": int, "bn_params": int,
    "relative_error": float,  # ||source(x) - target(x)|| / ||target(x)||, test logits
    "argmax_agreement": float, "test_acc": float, "target_test_acc": float,
    "sgd_test_acc": float, "sgd_relative_error": float, "sgd_argmax_agreement": float,
    "construction_minus_sgd_acc": float,
    "weight_residual": float,  # worst layer's ||F(e) - W|| / ||W|| (float64 solve)
    "condition_number": float,  # worst layer's
    "outside_linear_frac": float, "solver_used": str,
    "solve_seconds": float, "construction_seconds": float, "sgd_seconds": float, "target_seconds": float,
}


def load_data(spec: ConstructionSpec, data_root: str | None = None):
    """(x_train, y_train, x_test, y_test) with images as float32 in [0, 1]."""
    from sweeper.data import load_arrays

    x_tr, y_tr, x_te, y_te = load_arrays(spec.dataset, data_root)
    return x_tr.float() / 255.0, y_tr, x_te.float() / 255.0, y_te


def run(spec: ConstructionSpec, data_root: str | None = None) -> tuple[dict, dict[str, pd.DataFrame]]:
    """One construction trial: train the target, construct the source by solving for its BN
    parameters, train the same random source BN-only as the baseline, measure both."""
    if not isinstance(spec, ConstructionSpec):
        raise SweeperError(f"expected a ConstructionSpec, got {type(spec).__name__}")
    dtype = DTYPES[spec.dtype]
    x_tr, y_tr, x_te, y_te = load_data(spec, data_root)
    num_classes = int(max(int(y_tr.max()), int(y_te.max())) + 1)

    t0 = time.perf_counter()
    target = build_target(spec, tuple(x_tr.shape[1:]), num_classes)
    train_target(target, x_tr, y_tr, spec)
    target_seconds = time.perf_counter() - t0

    x_cal = x_tr if spec.calibration_size == 0 else x_tr[: spec.calibration_size]
    t0 = time.perf_counter()
    source = build_source(target, spec)
    infos = construct(target, source, x_cal, spec)
    construction_seconds = time.perf_counter() - t0
    source.to(dtype)
    target_eval = copy.deepcopy(target).to(dtype).eval()

    t_logits = logits(target_eval, x_te)
    s_logits = logits(source, x_te)
    layers = layer_report(target_eval, source, x_te, spec)

    # BN-only baseline on the same random source weights (same seed -> same weights).
    t0 = time.perf_counter()
    baseline = build_source(target, spec).to(dtype)
    teacher_tr = logits(target_eval, x_tr)
    curve = train_bn_only(baseline, x_tr.to(dtype), y_tr, teacher_tr, x_te, y_te, t_logits, spec)
    sgd_seconds = time.perf_counter() - t0
    b_logits = logits(baseline, x_te)

    def acc(out: torch.Tensor) -> float:
        return float((out.argmax(1) == y_te).double().mean())

    widx = _weight_layers(target)
    D = spec.source_depth
    rows = []
    for k, (i, info, rep) in enumerate(zip(widx, infos, layers)):
        layer, block = target[i], source[i]
        n_out, n_in = layer.weight.shape[0], layer.weight[0].numel()
        P, m = n_out * n_in, block.width
        rows.append({"layer": k, "kind": "conv" if block.conv else "linear", "n_out": n_out, "n_in": n_in,
                     "P": P, "m": m, "source_depth": D, "total_width": D * m, "dof": D * m - (D - 1),
                     "width_ratio_actual": D * m / P, "solver_used": info.method, "iterations": info.iterations,
                     "weight_residual": info.residual, "condition_number": info.condition_number,
                     "condition_method": info.condition_method, "solve_seconds": info.seconds,
                     "local_rel_error": rep["local_rel_error"],
                     "cumulative_rel_error": rep["cumulative_rel_error"],
                     "outside_linear_frac": rep["outside_linear_frac"]})
    layer_table = pd.DataFrame(rows, columns=list(LAYER_COLUMNS)).astype(LAYER_COLUMNS)

    P_total = int(layer_table["P"].sum())
    m_total = int(layer_table["total_width"].sum())
    n_bn = sum(bn.weight.numel() for bn in source.modules() if isinstance(bn, nn.modules.batchnorm._BatchNorm))
    outside = [r["outside_linear_frac"] * 1.0 for r in layers]
    test_acc, sgd_acc = acc(s_logits), acc(b_logits)
    row = {
        "width_ratio": float(spec.width_ratio),
        "source_depth": int(spec.source_depth),
        "P": P_total,
        "m": m_total,
        "m_over_P": m_total / P_total,
        "dof": int(layer_table["dof"].sum()),
        "bn_params": int(2 * n_bn),
        "relative_error": relative_error(s_logits, t_logits),
        "argmax_agreement": float((s_logits.argmax(1) == t_logits.argmax(1)).double().mean()),
        "test_acc": test_acc,
        "target_test_acc": acc(t_logits),
        "sgd_test_acc": sgd_acc,
        "sgd_relative_error": relative_error(b_logits, t_logits),
        "sgd_argmax_agreement": float((b_logits.argmax(1) == t_logits.argmax(1)).double().mean()),
        "construction_minus_sgd_acc": test_acc - sgd_acc,
        "weight_residual": float(layer_table["weight_residual"].max()),
        "condition_number": float(layer_table["condition_number"].max()),
        "outside_linear_frac": float(max(outside) if outside else 0.0),
        "solver_used": "+".join(sorted(set(layer_table["solver_used"]))),
        "solve_seconds": float(layer_table["solve_seconds"].sum()),
        "construction_seconds": construction_seconds,
        "sgd_seconds": sgd_seconds,
        "target_seconds": target_seconds,
    }
    return row, {"construction_layers": layer_table, "sgd_curve": curve}
