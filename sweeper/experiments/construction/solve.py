"""The scale equations of Burkholz's construction, solved in numpy float64 (no torch here).

A: m x n_in, B: n_out x m, W: n_out x n_in, R_l: m x m.

* D = 1: ``B diag(e) A = W``: P linear equations in m unknowns with the Khatri-Rao matrix
  ``M[(i, j), k] = B_ik A_kj``. Solved by minimum-norm least squares: dense LAPACK (gelsd, whose
  singular values give the condition number for free) when M fits, otherwise matrix-free LSQR on
  a LinearOperator (M is never formed; its normal matrix is ``(BᵀB) ∘ (AAᵀ)`` and
  ``Mᵀ vec(W) = diag(Bᵀ W Aᵀ)``).
* D >= 2: multilinear in (e_1, ..., e_D), with D - 1 scale symmetries, so about D*m - (D-1) >= P
  unknowns suffice: solved by Levenberg-Marquardt whose Gauss-Newton matrix has the same
  Hadamard structure block by block, ``(L_lᵀ L_l') ∘ (Rt_l Rt_l'ᵀ)``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse.linalg as spla

from sweeper.errors import SweeperError

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

