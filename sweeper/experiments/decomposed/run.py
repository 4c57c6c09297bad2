"""Batch normalisation decomposed, at initialisation (project issue 8).

Nachum, Bondaschi, Gastpar, Khina, "Batch Normalization Decomposed" (2024), following Daneshmand,
Joudaki, Bach, "Batch normalization orthogonalizes representations in deep random networks"
(NeurIPS 2021). A BN layer at initialisation is split into three independent switches:

- RC, recentering: subtract each neuron's batch mean;
- RS, rescaling: divide each neuron by its batch std (``"std"``, BatchNorm's own rule, the std
  taken about the batch mean whether or not RC is on) or by its batch RMS (``"rownorm"``,
  Daneshmand et al.: each neuron's row across the batch gets norm sqrt(n)); ``"global"`` divides
  the whole layer by one scalar, its RMS entry (a rescaling that changes no direction);
  ``"none"`` is off;
- NL, the non-linearity: any name of the activation registry (``identity`` = a linear network).

One layer is ``h -> W h -> RS(RC(.)) -> NL`` with W ~ N(0, 1/d), never trained. Layer 0 is the
input batch at width d. `run(spec)` propagates a batch of n inputs to depth L and measures, per
layer, the geometry of the representation H (d x n, one column per input); see `layer_metrics`.

Findings to reproduce: with RC and a ReLU, the batch collapses to one cluster except one point that
sits far away (norm ratio -> n-1) in an orthogonal direction (|cos| -> 0); with RS alone in a linear
network the columns become nearly orthogonal, down to a floor that shrinks like 1/sqrt(d).

Weights are regenerated per layer from (seed, layer), so a depth-300 network at d = 512 never holds
more than one d x d matrix, and the first L layers of a deeper network are the same network.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, ClassVar, Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from sweeper.errors import SweeperError
from sweeper.nn.activations import ACTIVATIONS, activation
from sweeper.registry import Registry
from sweeper.spec import Spec

# -- the normalisation, decomposed ----------------------------------------------------------------

#: rescaling rule: (x [n, d], eps) -> x divided per neuron (column of x) by a batch statistic
RESCALINGS: Registry[Callable[[torch.Tensor, float], torch.Tensor] | None] = Registry("rescaling")
RESCALINGS.add("none", None, "off")
RESCALINGS.add("std", lambda x, eps: x / torch.sqrt(x.var(0, unbiased=False, keepdim=True) + eps), "bn")
RESCALINGS.add("rownorm", lambda x, eps: x / torch.sqrt(x.pow(2).mean(0, keepdim=True) + eps), "rms")
RESCALINGS.add("global", lambda x, eps: x / torch.sqrt(x.pow(2).mean() + eps))

#: activations that are positively homogeneous of degree 1 (f(c x) = c f(x) for c > 0): a network
#: without RS built from them maps c H to c' H', so its representations may be renormalised
#: exactly, layer by layer, without changing any direction.
HOMOGENEOUS = frozenset({"identity", "relu", "leaky_relu"})


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


def _seed(*parts: int) -> int:
    """A 63-bit torch seed derived from integers (independent streams per purpose and layer)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


_INPUT_STREAM, _WEIGHT_STREAM, _PROJECTION_STREAM, _SELECTION_STREAM = 0, 1, 2, 3


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
        return self.norm.rs == "none" and self.nl in HOMOGENEOUS

    def weight(self, layer: int) -> torch.Tensor:
        if not 1 <= layer <= self.depth:
            raise IndexError(f"layer {layer} outside 1..{self.depth}")
        g = torch.Generator().manual_seed(_seed(self.seed, _WEIGHT_STREAM, layer))
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


# -- metrics of one representation ----------------------------------------------------------------

METRIC_COLUMNS = ("norm_ratio", "outlier_cos", "cluster_spread", "orthogonality_gap",
                  "outlier_dist_ratio", "mean_cos")


def orthogonality_gap(H: torch.Tensor) -> float:
    """V(H) = || HᵀH / ||H||_F² - I/n ||_F for H of shape (d, n) (Daneshmand et al. 2021).

    0 for orthonormal (or orthogonal equal-norm) columns; sqrt(1 - 1/n) for n equal columns.
    """
    H = H.detach().to(torch.float64)
    fro2 = float(H.pow(2).sum())
    if not fro2 > 0 or not math.isfinite(fro2):
        return float("nan")
    Hs = H / math.sqrt(fro2)
    n = H.shape[1]
    G = Hs.T @ Hs
    return float((G - torch.eye(n, dtype=torch.float64) / n).norm())


def cosine_matrix(H: torch.Tensor) -> torch.Tensor:
    """n x n cosine similarities of the columns of H (d, n); NaN rows/columns for zero columns."""
    H = H.detach().to(torch.float64)
    norms = H.norm(dim=0)
    scale = norms.max()
    if not scale > 0 or not torch.isfinite(scale):
        return torch.full((H.shape[1], H.shape[1]), float("nan"), dtype=torch.float64)
    Hn = H / scale
    norms = norms / scale
    U = Hn / torch.where(norms > 0, norms, torch.nan)
    return (U.T @ U).clamp(-1.0, 1.0)


def layer_metrics(H: torch.Tensor) -> dict[str, float | int]:
    """Scale-invariant geometry of a batch representation H of shape (d, n), one column per input.

    - outlier: the column farthest from the mean of the other columns. Since
      h_j - mean_{i≠j} h_i = n/(n-1) (h_j - mean_i h_i), this is the column farthest from the batch
      mean (ties: the lowest index).
    - centre: the mean of the other n-1 columns (the cluster centre).
    - norm_ratio = ||h_outlier|| / ||centre||  (n-1 in the ideal configuration after recentering,
      where n-1 columns equal c and the outlier is -(n-1) c, and in the post-ReLU configuration of
      n-1 equal columns a and an outlier b ⟂ a with ||b|| = (n-1) ||a||).
    - outlier_cos = |cos(h_outlier, centre)|  (1 after recentering, 0 in the post-ReLU one).
    - outlier_dist_ratio = ||h_outlier - centre|| / ||centre||.
    - cluster_spread = mean over the other columns of ||h_i - centre|| / ||centre||  (0 when they
      have collapsed to one point).
    - orthogonality_gap = V(H); mean_cos = mean off-diagonal cosine.

    H is first divided by its Frobenius norm (all metrics are scale-invariant), and everything is
    computed in float64 from H directly (not from the Gram matrix, whose cancellation would limit
    cluster_spread to ~1e-8). A zero or non-finite H gives NaN metrics and outlier_index -1.
    """
    H = H.detach().to(torch.float64)
    d, n = H.shape
    fro = float(H.norm())
    nan = float("nan")
    if n < 2 or not fro > 0 or not math.isfinite(fro):
        return {"outlier_index": -1, **{k: nan for k in METRIC_COLUMNS}}
    H = H / fro
    mu = H.mean(dim=1, keepdim=True)
    outlier = int(torch.argmax((H - mu).norm(dim=0)))
    rest = torch.cat([H[:, :outlier], H[:, outlier + 1:]], dim=1)
    centre = rest.mean(dim=1)
    h = H[:, outlier]
    c_norm, h_norm = float(centre.norm()), float(h.norm())

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else nan

    G = H.T @ H
    norms = G.diagonal().sqrt()
    cos = G / torch.outer(norms, norms)
    off = ~torch.eye(n, dtype=torch.bool)
    return {
        "outlier_index": outlier,
        "norm_ratio": ratio(h_norm, c_norm),
        "outlier_cos": ratio(abs(float(h @ centre)), h_norm * c_norm),
        "cluster_spread": ratio(float((rest - centre[:, None]).norm(dim=0).mean()), c_norm),
        "orthogonality_gap": float((G - torch.eye(n, dtype=torch.float64) / n).norm()),
        "outlier_dist_ratio": ratio(float((h - centre).norm()), c_norm),
        "mean_cos": float(cos[off].mean()),
    }


# -- inputs ---------------------------------------------------------------------------------------

InputBuilder = Callable[["DecomposedSpec", "str | None"], torch.Tensor]  # -> [n, d] float64
INPUTS: Registry[InputBuilder] = Registry("inputs")


@INPUTS.register("gaussian")
def _gaussian_inputs(spec: "DecomposedSpec", data_root: str | None) -> torch.Tensor:
    """n vectors N(0, s² I_d); with input_corr = ρ > 0 they share a common component,
    x_i = s (sqrt(ρ) z_0 + sqrt(1-ρ) z_i), so their pairwise cosines are ≈ ρ."""
    g = torch.Generator().manual_seed(_seed(spec.seed, _INPUT_STREAM))
    z = torch.randn(spec.batch + 1, spec.width, generator=g, dtype=torch.float64)
    rho = spec.input_corr
    x = math.sqrt(rho) * z[:1] + math.sqrt(1.0 - rho) * z[1:]
    return spec.input_scale * x


@INPUTS.register("outlier")
def _outlier_inputs(spec: "DecomposedSpec", data_root: str | None) -> torch.Tensor:
    """The paper's limiting configuration, to test its stability: inputs 0..n-2 equal a vector
    a ~ N(0, I_d), input n-1 is b ⟂ a with ||b|| = (n-1) ||a||; then every input gets independent
    N(0, input_noise²) noise per entry, and one global factor sets the RMS entry to input_scale."""
    g = torch.Generator().manual_seed(_seed(spec.seed, _INPUT_STREAM))
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
        rng = np.random.default_rng(_seed(spec.seed, _SELECTION_STREAM))
        idx = np.sort(rng.choice(len(x_train), size=spec.batch, replace=False))
        x = x_train[torch.from_numpy(idx)].reshape(spec.batch, -1).to(torch.float64) / 255.0
        D = x.shape[1]
        g = torch.Generator().manual_seed(_seed(spec.seed, _PROJECTION_STREAM, spec.width))
        P = torch.randn(D, spec.width, generator=g, dtype=torch.float64) / math.sqrt(D)
        h = x @ P
        rms = float(h.pow(2).mean().sqrt())
        return spec.input_scale * h / rms

    return build


INPUTS.add("digits", _image_inputs("digits"))
INPUTS.add("cifar10", _image_inputs("cifar10"), "cifar-10")


# -- the trial ------------------------------------------------------------------------------------

_DTYPES = {"float64": torch.float64, "float32": torch.float32}
_PROBES = ("output", "normed")


@dataclasses.dataclass(frozen=True)
class DecomposedSpec(Spec):
    """One trial: a random MLP with decomposed BN, propagated to depth, measured per layer.

    rc, rs, nl        the three components (rs: none | std | rownorm | global; nl: an activation)
    depth, width      L layers after the input layer 0, width d
    batch             n inputs
    inputs            gaussian | outlier (the limiting configuration) | digits | cifar10
    input_scale       RMS entry of the input layer (matters only for non-homogeneous nl)
    input_corr        gaussian only: common component, pairwise input cosines ≈ input_corr
    input_noise       outlier only: per-entry std of the noise added to the ideal configuration
    dtype             float64 | float32 (metrics are always computed in float64)
    eps               added to the variance in RS
    seed              inputs, image choice, projection and every weight derive from it
    record_every      stride of the per-layer table (layer 0 and the last layer always kept)
    cosine_layers     comma-separated layers whose full cosine matrix is kept; negative counts
                      from the end (-1 = last); layers beyond depth are skipped
    probe             where H is measured: "output" (after NL) or "normed" (after RC/RS, before NL)
    """

    experiment: ClassVar[str] = "decomposed"

    rc: bool = True
    rs: str = "none"
    nl: str = "relu"
    depth: int = 300
    width: int = 512
    batch: int = 16
    inputs: str = "gaussian"
    input_scale: float = 1.0
    input_corr: float = 0.0
    input_noise: float = 0.0
    dtype: str = "float64"
    eps: float = 1e-5
    seed: int = 0
    record_every: int = 1
    cosine_layers: str = "0,10,100,-1"
    probe: str = "output"

    def resolve(self) -> "DecomposedSpec":
        try:
            canon = {"rs": RESCALINGS.canonical(self.rs), "nl": ACTIVATIONS.canonical(self.nl),
                     "inputs": INPUTS.canonical(self.inputs)}
        except SweeperError as e:
            field = "rs" if self.rs not in RESCALINGS else "nl" if self.nl not in ACTIVATIONS else "inputs"
            raise SweeperError(e.message, field) from None
        return dataclasses.replace(self, **canon)

    def validate(self) -> None:
        for field, ok, what in [
            ("rs", self.rs in RESCALINGS, f"valid choices: {RESCALINGS.choices()}"),
            ("nl", self.nl in ACTIVATIONS, f"valid choices: {ACTIVATIONS.choices()}"),
            ("inputs", self.inputs in INPUTS, f"valid choices: {INPUTS.choices()}"),
            ("depth", self.depth >= 0, "must be >= 0"),
            ("width", self.width >= 1, "must be >= 1"),
            ("batch", self.batch >= 2, "must be >= 2"),
            ("input_scale", self.input_scale > 0, "must be > 0"),
            ("input_corr", 0.0 <= self.input_corr < 1.0, "must be in [0, 1)"),
            ("input_noise", self.input_noise >= 0.0, "must be >= 0"),
            ("dtype", self.dtype in _DTYPES, f"valid choices: {', '.join(_DTYPES)}"),
            ("eps", self.eps > 0, "must be > 0"),
            ("record_every", self.record_every >= 1, "must be >= 1"),
            ("probe", self.probe in _PROBES, f"valid choices: {', '.join(_PROBES)}"),
        ]:
            if not ok:
                raise SweeperError(f"{getattr(self, field)!r} is invalid: {what}", field)
        if self.input_corr and self.inputs != "gaussian":
            raise SweeperError("input_corr applies to gaussian inputs only", "input_corr")
        if self.input_noise and self.inputs != "outlier":
            raise SweeperError("input_noise applies to outlier inputs only", "input_noise")
        self.cosine_layer_list()

    def cosine_layer_list(self) -> list[int]:
        """The layers (0..depth, sorted, unique) whose cosine matrix is kept."""
        out = set()
        for part in (p.strip() for p in self.cosine_layers.split(",")):
            if not part:
                continue
            try:
                k = int(part)
            except ValueError:
                raise SweeperError(f"expected comma-separated integers, got {self.cosine_layers!r}",
                                   "cosine_layers") from None
            k = self.depth + 1 + k if k < 0 else k
            if 0 <= k <= self.depth:
                out.add(k)
        return sorted(out)


def build(spec: DecomposedSpec) -> DecomposedMLP:
    return DecomposedMLP(spec.width, spec.depth, spec.rc, spec.rs, spec.nl, spec.eps, spec.seed,
                         _DTYPES[spec.dtype])


def inputs(spec: DecomposedSpec, data_root: str | None = None) -> torch.Tensor:
    """The input batch, layer 0, as ``[n, d]`` float64."""
    return INPUTS[spec.inputs](spec, data_root)


#: the typed result columns `run` adds to the trial's `trials` row (for the experiment registry):
#: EXPERIMENTS.add("decomposed", Experiment("sweeper.experiments.decomposed.run:DecomposedSpec",
#:                                          "sweeper.experiments.decomposed.run:run", ROW_COLUMNS, ...))
ROW_COLUMNS: dict[str, type] = {
    **{f"final_{k}": float for k in METRIC_COLUMNS},
    "final_outlier_index": int,
    "outlier_stable_from": int,
    "final_log10_rms": float,
    "finite": bool,
    "seconds": float,
}


def run(spec: DecomposedSpec, data_root: str | None = None) -> tuple[dict, dict[str, pd.DataFrame]]:
    """Propagate the spec's batch through its random network; return (row, tables).

    row: final-layer metrics (``final_<metric>``, final_outlier_index), outlier_stable_from (the
    first recorded layer from which the outlier is the same input to the end), final_log10_rms,
    finite (every recorded metric is finite: no layer vanished, overflowed or degenerated), seconds.
    tables["layers"]: one row per recorded layer: layer, rc, rs, nl, n, d, outlier_index,
    norm_ratio, outlier_cos, cluster_spread, orthogonality_gap, outlier_dist_ratio, mean_cos,
    log10_rms (log10 of the true RMS entry of H, tracked through renormalisation).
    tables["cosine"]: long table layer, i, j, cos (all n² pairs) for the spec's cosine layers.
    """
    t0 = time.perf_counter()
    if not isinstance(spec, DecomposedSpec):
        raise TypeError(f"expected a DecomposedSpec, got {type(spec).__name__}")
    spec = spec.resolve()
    spec.validate()
    net = build(spec)
    x0 = inputs(spec, data_root)
    keep_cos = set(spec.cosine_layer_list())

    def wanted(layer: int) -> bool:
        return layer % spec.record_every == 0 or layer == spec.depth

    rows: list[dict] = []
    cos_parts: list[pd.DataFrame] = []
    n, d = spec.batch, spec.width
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")

    def record(layer: int, h: torch.Tensor, log_scale: float) -> None:
        if not (wanted(layer) or layer in keep_cos):
            return
        H = h.detach().to(torch.float64).T  # (d, n)
        if wanted(layer):
            rms = float(H.pow(2).mean().sqrt())
            log10_rms = (math.log(rms) + log_scale) / math.log(10) if rms > 0 and math.isfinite(rms) else float("nan")
            rows.append({"layer": layer, "rc": spec.rc, "rs": spec.rs, "nl": spec.nl, "n": n, "d": d,
                         **layer_metrics(H), "log10_rms": log10_rms})
        if layer in keep_cos:
            C = cosine_matrix(H).numpy()
            cos_parts.append(pd.DataFrame({"layer": np.full(n * n, layer, dtype=np.int64),
                                           "i": ii.ravel().astype(np.int64),
                                           "j": jj.ravel().astype(np.int64),
                                           "cos": C.ravel().astype(np.float64)}))

    x = x0.to(net.dtype)
    record(0, x, 0.0)
    with torch.no_grad():
        for layer, normed, out, log_scale in net.trace(x):
            record(layer, out if spec.probe == "output" else normed, log_scale)

    layers = pd.DataFrame(rows)
    layers = layers.astype({"layer": "int64", "rc": "bool", "rs": "str", "nl": "str", "n": "int64",
                            "d": "int64", "outlier_index": "int64",
                            **{k: "float64" for k in (*METRIC_COLUMNS, "log10_rms")}})
    cosine = (pd.concat(cos_parts, ignore_index=True) if cos_parts else
              pd.DataFrame({"layer": np.zeros(0, np.int64), "i": np.zeros(0, np.int64),
                            "j": np.zeros(0, np.int64), "cos": np.zeros(0, np.float64)}))

    final = layers.iloc[-1]
    idx = layers["outlier_index"].to_numpy()
    changed = np.flatnonzero(idx != idx[-1])
    stable_from = int(layers["layer"].iloc[changed[-1] + 1]) if len(changed) else 0
    finite = bool(np.isfinite(layers[list(METRIC_COLUMNS)].to_numpy()).all())
    row = {
        **{f"final_{k}": float(final[k]) for k in METRIC_COLUMNS},
        "final_outlier_index": int(final["outlier_index"]),
        "outlier_stable_from": stable_from,
        "final_log10_rms": float(final["log10_rms"]),
        "finite": finite,
        "seconds": time.perf_counter() - t0,
    }
    return row, {"layers": layers, "cosine": cosine}
