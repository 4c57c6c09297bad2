"""Scale-invariant geometry of one batch representation H (d x n, one column per input): the
outlier and the cluster of Nachum et al., and the orthogonality gap of Daneshmand et al."""
from __future__ import annotations

import math

import torch

from sweeper.experiments.decomposed import METRIC_COLUMNS

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
