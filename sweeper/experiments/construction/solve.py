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
* Output scale solved too (the paper's construction uses every γ, the block's last BN included):
  ``diag(g) B diag(e_D) ... diag(e_1) A = W`` is multilinear at every depth (bilinear at D = 1),
  with D scale symmetries, so D*m + n_out - D >= P unknowns suffice; the same Levenberg-Marquardt
  solves it, g being one more factor (its fixed matrix the identity).
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


def solve_linear_output(A: np.ndarray, B: np.ndarray, W: np.ndarray, method: str = "auto",
                        dense_limit: int = 8_000_000, tol: float = 1e-13, iter_lim: int = 20_000,
                        lm_iters: int = 100) -> tuple[list[np.ndarray], SolveInfo]:
    """Depth 1 with the output scale solved too: scales e (m) and g (n_out) with
    diag(g) B diag(e) A ≈ W; exact once m + n_out - 1 >= P.

    At and above that threshold: bilinear, but linear after a change of unknowns. With h = 1 / g it
    reads B diag(e) A = diag(h) W, and with h = 1 + δ it is the linear least-squares problem
    ``M e - D_W δ = vec(W)`` (M the Khatri-Rao matrix, D_W[(i, j), i] = W_ij) in m + n_out unknowns:
    one gelsd (or LSQR) solve, then Levenberg-Marquardt polishes the last digits. (Levenberg-
    Marquardt alone, from a constant start, crawls there: the Jacobian at the solution is nearly
    square; at n_out = 6, n_in = 9 and m + n_out - 1 = P it stopped at a 4% residual.)
    Below the threshold that solve minimises a row-weighted error (diag(h) times the true one) and is
    a poor start; there Levenberg-Marquardt runs from the constant start and from the fixed-output
    least-squares fit (g = 1, so the result is never worse than fixing g), and the better wins."""
    A, B, W = (np.asarray(a, dtype=np.float64) for a in (A, B, W))
    m, n_in = A.shape
    n_out = B.shape[0]
    P, N = n_out * n_in, m + n_out
    w = W.reshape(-1)
    if method == "auto":
        method = "dense" if P * N <= dense_limit else "lsqr"
    if method not in ("dense", "lsqr"):
        raise SweeperError(f"unknown solver {method!r}; valid choices: auto, dense, lsqr")
    t0 = time.perf_counter()
    if degrees_of_freedom(m, n_out, 1, True) < P:
        e_lin, lin = solve_linear(A, B, W, method, dense_limit, tol, iter_lim)
        tries = [solve_multilinear(A, [], B, W, lm_iters, tol, dense_limit, output_scale=True),
                 solve_multilinear(A, [], B, W, lm_iters, tol, dense_limit, es0=[e_lin, np.ones(n_out)],
                                   output_scale=True)]
        es, info = min(tries, key=lambda t: t[1].residual)
        return es, SolveInfo(f"{lin.method}+{info.method}", info.residual, info.condition_number,
                             info.condition_method, sum(t[1].iterations for t in tries) + lin.iterations,
                             time.perf_counter() - t0)
    if method == "dense":
        DW = np.zeros((n_out, n_in, n_out))
        DW[np.arange(n_out), :, np.arange(n_out)] = W
        M = np.hstack([khatri_rao(A, B), -DW.reshape(P, n_out)])
        x = scipy.linalg.lstsq(M, w, lapack_driver="gelsd")[0]
    else:
        op = spla.LinearOperator(
            (P, N), dtype=np.float64,
            matvec=lambda x: ((B * np.ravel(x)[:m]) @ A - np.ravel(x)[m:, None] * W).reshape(-1),
            rmatvec=lambda v: np.concatenate([((B.T @ np.reshape(v, (n_out, n_in))) * A).sum(axis=1),
                                              -(np.reshape(v, (n_out, n_in)) * W).sum(axis=1)]),
        )
        x = spla.lsqr(op, w, atol=tol, btol=tol, conlim=1e16, iter_lim=iter_lim)[0]
    h = 1.0 + x[m:]
    # h = 0 would need g = ∞: only at the degenerate boundary m + n_out = P; keep the sign, bound the size
    h = np.where(np.abs(h) < 1e-8, np.copysign(1e-8, h), h)
    es, info = solve_multilinear(A, [], B, W, lm_iters, tol, dense_limit, es0=[x[:m], 1.0 / h], output_scale=True)
    info = SolveInfo(f"{method}+{info.method}", info.residual, info.condition_number, info.condition_method,
                     info.iterations + 1, time.perf_counter() - t0)
    if m >= P:  # g = 1 is exact too: keep whichever solution cancels less (float32 rounding grows with it)
        e_fixed, fixed = solve_linear(A, B, W, method, dense_limit, tol, iter_lim)
        ones = np.ones(n_out)
        if fixed.residual <= max(info.residual, 10 * tol) and \
                cancellation(A, B, [e_fixed, ones]) <= cancellation(A, B, es):
            return [e_fixed, ones], SolveInfo(fixed.method, fixed.residual, fixed.condition_number,
                                              fixed.condition_method, fixed.iterations + info.iterations,
                                              time.perf_counter() - t0)
    return es, info


def cancellation(A: np.ndarray, B: np.ndarray, es: list[np.ndarray]) -> float:
    """|| |g| |B| |diag(e)| |A| || / || g B diag(e) A ||: how much larger the terms of the block's sums
    are than their result. The network computes those sums in float32 (after BN shifts the
    following BN removes), so its rounding error grows with this ratio."""
    e, g = es[0], es[1] if len(es) > 1 else np.ones(B.shape[0])
    terms = (np.abs(g)[:, None] * np.abs(B)) @ (np.abs(e)[:, None] * np.abs(A))
    return float(np.linalg.norm(terms) / max(np.linalg.norm((g[:, None] * B * e) @ A), 1e-300))


def _factors(A: np.ndarray, Rs: list[np.ndarray], B: np.ndarray, output_scale: bool) -> list[np.ndarray]:
    """The fixed matrices M_0 = A, M_1..M_{D-1} = R_l, M_D = B (and M_{D+1} = I when the block's
    output BN scale is an unknown too) of F = M_K diag(s_K) M_{K-1} ... diag(s_1) M_0."""
    Ms = [A, *Rs, B]
    if output_scale:
        Ms.append(np.eye(B.shape[0]))
    return Ms


def _chain(Ms: list[np.ndarray], es: list[np.ndarray]):
    """Left and right partial products of F = M_K diag(s_K) ... M_1 diag(s_1) M_0:
    F = L_l diag(s_l) Rt_l for every l."""
    K = len(es)
    Rt = [Ms[0]]
    for l in range(K - 1):
        Rt.append(Ms[l + 1] @ (es[l][:, None] * Rt[l]))
    L = [None] * K
    L[K - 1] = Ms[K]
    for l in range(K - 2, -1, -1):
        L[l] = (L[l + 1] * es[l + 1][None, :]) @ Ms[l + 1]
    return L, Rt


def _map(Ms: list[np.ndarray], es: list[np.ndarray]) -> np.ndarray:
    x = Ms[0]
    for l, e in enumerate(es):
        x = Ms[l + 1] @ (e[:, None] * x)
    return x


def multilinear_map(A, Rs, B, es) -> np.ndarray:
    """B diag(e_D) R_{D-1} ... diag(e_1) A, times diag(e_{D+1}) on the left when es has D + 1
    entries (the output scale)."""
    return _map(_factors(A, Rs, B, len(es) == len(Rs) + 2), es)


def _balance(es: list[np.ndarray]) -> list[np.ndarray]:
    """Same product, equal norms per layer (the K - 1 scale symmetries)."""
    norms = np.array([max(np.linalg.norm(e), 1e-300) for e in es])
    geo = float(np.exp(np.mean(np.log(norms))))
    return [e * (geo / n) for e, n in zip(es, norms)]


def _gn_gram(L, Rt) -> np.ndarray:
    K = len(L)
    blocks = [[(L[a].T @ L[b]) * (Rt[a] @ Rt[b].T) for b in range(K)] for a in range(K)]
    return np.block(blocks)


def _gn_grad(L, Rt, r) -> np.ndarray:
    return np.concatenate([((L[l].T @ r) * Rt[l]).sum(axis=1) for l in range(len(L))])


def degrees_of_freedom(m: int, n_out: int, depth: int, output_scale: bool) -> int:
    """Free scales of one block: D layers of m (and n_out output scales when solved), less one per
    scale symmetry between consecutive factors (c s_l, s_{l+1} / c give the same map)."""
    factors = depth + (1 if output_scale else 0)
    return depth * m + (n_out if output_scale else 0) - (factors - 1)


def expected_residual(dof: int, P: int) -> float:
    """The relative residual ||F - W|| / ||W|| to expect below the threshold: sqrt(1 - dof / P).

    Why: at depth 1 with the output scale fixed, the reachable maps B diag(e) A are the span S of
    the m rank-one matrices b_k a_kᵀ, a random m-dimensional subspace of the P-dimensional space of
    weight matrices, and the least-squares solution is the orthogonal projection of W onto S. When
    A and B are Gaussian, (A, B) and (A V, U B) have the same law for orthogonal U, V, so E[Π_S]
    commutes with every W -> U W Vᵀ; that action of O(n_out) x O(n_in) on R^{n_out x n_in} is
    irreducible, so E[Π_S] = (m / P) I (its trace is m). Hence for every fixed W (and for any source
    weights when W is Gaussian, which is itself rotation invariant)
        E ||W - Π_S W||² = (1 - m / P) ||W||²,
    and the ratio concentrates as P grows, so the relative residual is about sqrt(1 - m / P).
    For depth >= 2 or a solved output scale the reachable set is a curved manifold of dimension
    `dof`: sqrt(1 - dof / P) is then the tangent-space (first-order) count, and the measured
    residual is lower, since a curved set reaches nearer a given W than a flat one of the same
    dimension. 0 at and above the threshold dof >= P."""
    return math.sqrt(max(0.0, 1.0 - dof / P)) if P > 0 else 0.0


def solve_multilinear(A: np.ndarray, Rs: list[np.ndarray], B: np.ndarray, W: np.ndarray,
                      iters: int = 100, tol: float = 1e-13, dense_limit: int = 8_000_000,
                      es0: list[np.ndarray] | None = None,
                      output_scale: bool = False) -> tuple[list[np.ndarray], SolveInfo]:
    """Scales e_1..e_D with B diag(e_D) R_{D-1} ... diag(e_1) A ≈ W by Levenberg-Marquardt; with
    `output_scale`, also the output scales g (n_out) of diag(g) B diag(e_D) ... A ≈ W (the block's
    last BN, the paper's construction: every γ is a free parameter), returned as the last entry.

    Start: every scale the same constant, scaled so that ||F|| = ||W|| (a start from the linear
    least-squares fit of e_1 is worse: at m = P it is the ill-conditioned square solve, whose large
    scales then amplify float32 rounding in the network by 100x). Each step solves (JᵀJ + μ I) δ = -Jᵀr, with JᵀJ assembled from Hadamard
    blocks when (number of scales)² <= dense_limit, else by damped matrix-free LSQR. After each
    accepted step the layers are rebalanced to equal norms (the product does not change)."""
    A, B, W = (np.asarray(a, dtype=np.float64) for a in (A, B, W))
    Rs = [np.asarray(R, dtype=np.float64) for R in Rs]
    Ms = _factors(A, Rs, B, output_scale)
    K = len(Ms) - 1  # scale vectors: D, plus the output scale
    sizes = [M.shape[0] for M in Ms[:-1]]
    offsets = np.cumsum([0] + sizes)
    n_out, n_in = W.shape
    P, N = n_out * n_in, int(offsets[-1])
    t0 = time.perf_counter()
    normW = max(float(np.linalg.norm(W)), 1e-300)
    dense = N * N <= dense_limit
    if es0 is None:
        ones = [np.ones(s) for s in sizes]
        scale = (normW / max(float(np.linalg.norm(_map(Ms, ones))), 1e-300)) ** (1 / K)
        es = [scale * e for e in ones]
    else:
        es = [np.asarray(e, dtype=np.float64).copy() for e in es0]

    def cost(es_):
        r_ = _map(Ms, es_) - W
        return 0.5 * float(np.sum(r_ * r_)), r_

    c, r = cost(es)
    mu, nu, it, stalled = None, 2.0, 0, 0
    for it in range(1, iters + 1):
        if math.sqrt(2 * c) / normW < tol or stalled >= 3:
            it -= 1
            break
        L, Rt = _chain(Ms, es)
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
            new_es = [e + delta[offsets[l]:offsets[l + 1]] for l, e in enumerate(es)]
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
    L, Rt = _chain(Ms, es)
    rank = min(P, N - (K - 1))
    if dense:
        cond, cmethod = _condition_from_gram(_gn_gram(L, Rt), rank), "gram"
    else:
        op = _jacobian_operator(L, Rt, n_out, n_in)
        cond, cmethod = float(spla.lsqr(op, np.zeros(P) + W.reshape(-1), iter_lim=50)[6]), "lsqr_estimate"
    seconds = time.perf_counter() - t0
    return es, SolveInfo("lm-dense" if dense else "lm-lsqr", residual, cond, cmethod, it, seconds)


def _jacobian_operator(L, Rt, n_out, n_in) -> spla.LinearOperator:
    offsets = np.cumsum([0] + [Ll.shape[1] for Ll in L])

    def matvec(d):
        d = np.ravel(d)
        return sum((Ll * d[offsets[l]:offsets[l + 1]]) @ Rt[l] for l, Ll in enumerate(L)).reshape(-1)

    def rmatvec(v):
        return _gn_grad(L, Rt, np.reshape(v, (n_out, n_in)))

    return spla.LinearOperator((n_out * n_in, int(offsets[-1])), matvec=matvec, rmatvec=rmatvec, dtype=np.float64)

