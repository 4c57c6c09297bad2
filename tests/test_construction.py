"""Burkholz's construction: the scale solvers, the constructed torch networks, the figures."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from threadpoolctl import threadpool_limits

from sweeper.experiments.construction import ROW_COLUMNS
from sweeper.experiments.construction.networks import build_source, build_target, construct
from sweeper.experiments.construction.run import load_data, run as run_trial
from sweeper.experiments.construction.solve import (degrees_of_freedom, expected_residual, khatri_rao, multilinear_map,
                                                    scales_gram, solve_linear, solve_linear_output, solve_multilinear)
from sweeper.experiments.construction.spec import ConstructionSpec
from sweeper.analysis import construction as AC
from sweeper.errors import SweeperError

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    with threadpool_limits(1):
        yield


def run(spec, data_root=None):
    """(row, tables) of one construction trial."""
    result = run_trial(spec, data_root)
    return result.row, result.tables


def _problem(n_out: int, n_in: int, m: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n_in)) / math.sqrt(n_in)
    B = rng.standard_normal((n_out, m)) / math.sqrt(m)
    W = rng.standard_normal((n_out, n_in))
    return A, B, W


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# -- the linear system B diag(e) A = W ---------------------------------------------------------------
def test_khatri_rao_matrix_and_its_gram():
    A, B, _ = _problem(3, 5, 7)
    e = np.random.default_rng(1).standard_normal(7)
    M = khatri_rao(A, B)
    assert M.shape == (15, 7)
    np.testing.assert_allclose(M @ e, (B @ np.diag(e) @ A).reshape(-1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(M.T @ M, scales_gram(A, B), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ratio", [1.1, 1.5, 2.0])
@pytest.mark.parametrize("method", ["dense", "lsqr"])
def test_solver_reproduces_w_exactly_above_threshold(ratio, method):
    n_out, n_in = 6, 8
    P = n_out * n_in
    A, B, W = _problem(n_out, n_in, math.ceil(ratio * P))
    e, info = solve_linear(A, B, W, method)
    assert _rel(B @ np.diag(e) @ A, W) < 1e-8
    assert info.residual < 1e-8
    assert info.method == method


@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_solver_cannot_reproduce_w_below_threshold(ratio):
    n_out, n_in = 6, 8
    P = n_out * n_in
    A, B, W = _problem(n_out, n_in, int(ratio * P))
    e, info = solve_linear(A, B, W, "dense")
    assert _rel(B @ np.diag(e) @ A, W) > 1e-2
    assert info.residual > 1e-2
    # ... and the answer is the least-squares optimum: the residual is orthogonal to M's columns
    M = khatri_rao(A, B)
    r = M @ e - W.reshape(-1)
    assert np.abs(M.T @ r).max() < 1e-9 * np.abs(M).max() * np.linalg.norm(W)


@pytest.mark.parametrize("ratio", [0.7, 1.5])
def test_matrix_free_agrees_with_dense(ratio):
    n_out, n_in = 5, 9
    A, B, W = _problem(n_out, n_in, math.ceil(ratio * n_out * n_in), seed=3)
    e_dense, info_d = solve_linear(A, B, W, "dense")
    e_free, info_f = solve_linear(A, B, W, "lsqr", tol=1e-15)
    assert _rel(e_free, e_dense) < 1e-7  # both the minimum-norm least-squares solution
    assert info_f.condition_method == "gram"
    assert info_f.condition_number == pytest.approx(info_d.condition_number, rel=1e-6)
    # auto picks the matrix-free path when M would be too large
    _, info_auto = solve_linear(A, B, W, "auto", dense_limit=10)
    assert info_auto.method == "lsqr"


def test_condition_number_is_that_of_the_khatri_rao_matrix_and_peaks_at_m_equals_p():
    n_out, n_in = 6, 8
    P = n_out * n_in
    conds = {}
    for m in (P // 2, P, 2 * P):
        A, B, W = _problem(n_out, n_in, m, seed=5)
        _, info = solve_linear(A, B, W, "dense")
        s = np.linalg.svd(khatri_rao(A, B), compute_uv=False)
        assert info.condition_number == pytest.approx(s[0] / s[min(P, m) - 1], rel=1e-8)
        conds[m] = info.condition_number
    assert conds[P] > 5 * conds[2 * P] and conds[P] > 5 * conds[P // 2]


# -- depth for width: the multilinear system ------------------------------------------------------------
def _deep_problem(n_out, n_in, m, depth, seed=0):
    rng = np.random.default_rng(seed)
    A, B, W = _problem(n_out, n_in, m, seed)
    Rs = [rng.standard_normal((m, m)) / math.sqrt(m) for _ in range(depth - 1)]
    return A, Rs, B, W


def test_lm_depth2_exact_once_2m_minus_1_reaches_p():
    n_out, n_in = 6, 9
    P = n_out * n_in  # 54
    m = 30  # 2m - 1 = 59 >= P, while m alone is far below P
    A, Rs, B, W = _deep_problem(n_out, n_in, m, 2)
    es, info = solve_multilinear(A, Rs, B, W, iters=300)
    assert _rel(multilinear_map(A, Rs, B, es), W) < 1e-8
    assert info.residual < 1e-8 and info.method == "lm-dense"
    # the matrix-free inner solver gets there too
    es2, info2 = solve_multilinear(A, Rs, B, W, iters=300, dense_limit=10)
    assert info2.method == "lm-lsqr" and info2.residual < 1e-8
    # a single BN layer of the same width cannot
    _, lin = solve_linear(A, B, W, "dense")
    assert lin.residual > 0.1


def test_lm_depth2_not_exact_below_threshold():
    n_out, n_in = 6, 9
    A, Rs, B, W = _deep_problem(n_out, n_in, 20, 2)  # 2m - 1 = 39 < 54
    es, info = solve_multilinear(A, Rs, B, W, iters=300)
    assert info.residual > 1e-3


def test_multilinear_map_matches_explicit_product():
    A, Rs, B, W = _deep_problem(3, 4, 5, 3, seed=2)
    es = [np.random.default_rng(i).standard_normal(5) for i in range(3)]
    explicit = B @ np.diag(es[2]) @ Rs[1] @ np.diag(es[1]) @ Rs[0] @ np.diag(es[0]) @ A
    np.testing.assert_allclose(multilinear_map(A, Rs, B, es), explicit, rtol=1e-12, atol=1e-12)


# -- the block's last BN scale solved too (the paper's construction) ----------------------------------
@pytest.mark.parametrize("method", ["dense", "lsqr"])
def test_output_scale_makes_depth1_exact_below_m_equals_p(method):
    n_out, n_in = 6, 9
    P = n_out * n_in
    for m in (P - n_out + 1, P - n_out + 3):  # m + n_out - 1 >= P: exact capacity, yet m < P
        A, B, W = _problem(n_out, n_in, m, seed=m)
        (e, g), info = solve_linear_output(A, B, W, method, tol=1e-15)
        assert _rel(np.diag(g) @ B @ np.diag(e) @ A, W) < 1e-9 and info.residual < 1e-9
        assert np.ptp(g) > 1e-3  # a genuine per-unit scale, not one constant
        _, fixed = solve_linear(A, B, W, "dense")  # the output scale fixed: m unknowns, P equations
        assert fixed.residual > 0.1
    assert degrees_of_freedom(P - n_out + 1, n_out, 1, True) == P
    assert degrees_of_freedom(P - n_out + 1, n_out, 1, False) == P - n_out + 1


def test_output_scale_below_threshold_never_worse_than_fixed():
    n_out, n_in = 6, 9
    for m in (20, 40):
        A, B, W = _problem(n_out, n_in, m, seed=m)
        es, info = solve_linear_output(A, B, W, "dense")
        _, fixed = solve_linear(A, B, W, "dense")
        assert info.residual <= fixed.residual + 1e-12
        assert _rel(multilinear_map(A, [], B, es), W) == pytest.approx(info.residual, rel=1e-9)
    # depth 2: the output scale is one more factor of the Levenberg-Marquardt solve
    A, Rs, B, W = _deep_problem(n_out, n_in, 27, 2)  # 2m + n_out - 2 = 58 >= P = 54
    es, info = solve_multilinear(A, Rs, B, W, iters=300, output_scale=True)
    assert len(es) == 3 and len(es[-1]) == n_out and info.residual < 1e-6
    _, without = solve_multilinear(A, Rs, B, W, iters=300)  # 2m - 1 = 53 < P
    assert without.residual > 1e-3


def test_expected_residual_is_sqrt_one_minus_m_over_p_for_gaussian_targets():
    """Least squares projects W onto the m-dimensional span of the b_k a_kᵀ: E||residual||² / ||W||²
    = 1 - m / P (solve.expected_residual's argument); at P = 192 the ratio is within a few % of it."""
    n_out, n_in = 12, 16
    P = n_out * n_in
    for m in (48, 96, 144):
        measured = [solve_linear(*_problem(n_out, n_in, m, seed=s), method="dense")[1].residual for s in range(3)]
        expected = expected_residual(degrees_of_freedom(m, n_out, 1, False), P)
        assert expected == pytest.approx(math.sqrt(1 - m / P))
        assert np.mean(measured) == pytest.approx(expected, rel=0.08)
    assert expected_residual(P, P) == 0.0 and expected_residual(2 * P, P) == 0.0


# -- genuine torch networks ----------------------------------------------------------------------------
FAST = dict(hidden=8, target_epochs=4, sgd_epochs=1, batch_size=128)


def test_spec_defaults_are_plain_values_and_validated():
    spec = ConstructionSpec()
    for f in dataclasses.fields(spec):
        assert isinstance(getattr(spec, f.name), (int, float, str, bool))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 1
    with pytest.raises(SweeperError, match="activation"):
        ConstructionSpec(activation="relux")
    with pytest.raises(SweeperError, match="width_ratio"):
        ConstructionSpec(width_ratio=0)
    with pytest.raises(SweeperError, match="weight_init"):
        ConstructionSpec(weight_init="nope")
    with pytest.raises(SweeperError, match="output_gamma.*fixed, solve"):
        ConstructionSpec(output_gamma="nope")
    with pytest.raises(SweeperError, match="unknown target 'nope'; valid choices: cifar-cnn, cnn, mlp"):
        ConstructionSpec(target="nope")
    with pytest.raises(SweeperError, match="target cifar-cnn reads 3x32x32 images.*valid datasets: cifar10, cifar100") as e:
        ConstructionSpec(target="cifar-cnn")  # the default dataset is digits
    assert e.value.where == "dataset"
    assert ConstructionSpec(target="cifar-cnn", dataset="cifar10").target == "cifar-cnn"


def test_relu_mlp_reproduced_at_width_ratio_1_2():
    spec = ConstructionSpec(width_ratio=1.2, **FAST)
    row, tables = run(spec)
    assert row["relative_error"] < 1e-4
    assert row["argmax_agreement"] == 1.0
    assert row["test_acc"] == row["target_test_acc"] > 0.5
    assert row["weight_residual"] < 1e-10
    assert row["P"] == 64 * 8 + 8 * 10 and row["m"] >= 1.2 * row["P"]
    assert row["construction_minus_sgd_acc"] == pytest.approx(row["test_acc"] - row["sgd_test_acc"])
    layers = tables["construction_layers"]
    assert list(layers["P"]) == [512, 80] and (layers["m"] >= 1.2 * layers["P"]).all()
    assert (layers["outside_linear_frac"] == 0).all()
    assert list(row) == list(ROW_COLUMNS)
    for name, value in row.items():
        assert type(value) is ROW_COLUMNS[name], name
    for t in tables.values():
        assert not any(t[c].isna().all() for c in t.columns)
        assert all(t[c].dtype != object for c in t.columns if c not in ("kind", "solver_used", "condition_method"))


def _output_scales(source) -> list[torch.Tensor]:
    """Each block's last BN as the eval-mode scale γ / sqrt(var + eps) it applies per unit."""
    from sweeper.experiments.construction.networks import BNBlock

    out = []
    for block in (m for m in source if isinstance(m, BNBlock)):
        bn = block.norms()[-1]
        out.append(bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps))
    return out


def test_last_bn_gamma_solved_makes_an_exact_capacity_network_exact():
    # hidden 4: layer 1 has P = 256, n_out = 4, m = ceil(0.99 * 256) = 254 < P, yet m + n_out - 1 = 257 >= P
    base = dict(hidden=4, width_ratio=0.99, target_epochs=4, sgd_epochs=0, batch_size=128)
    spec_fixed, spec_solved = ConstructionSpec(**base), ConstructionSpec(output_gamma="solve", **base)
    fixed, t_fixed = run(spec_fixed)
    solved, t_solved = run(spec_solved)
    assert list(t_fixed["construction_layers"]["m"]) == [254, 40]
    assert fixed["weight_residual"] > 0.03 and fixed["relative_error"] > 3e-3 and fixed["expected_rel_error"] > 0.05
    assert solved["weight_residual"] < 1e-9 and solved["relative_error"] < 1e-3 and solved["expected_rel_error"] == 0
    assert solved["relative_error"] < fixed["relative_error"] / 10
    assert solved["argmax_agreement"] == 1.0
    assert list(t_solved["construction_layers"]["dof"]) == [254 + 4 - 1, 40 + 10 - 1]
    # the last BN's γ: fixed gives one scale 1/gain for every unit of a block; solved, one per unit in
    # layer 1 (m < P). Layer 2 has m = P, where g = 1 is exact too and is kept when it cancels less.
    x_tr = load_data(spec_fixed)[0]
    scales = {}
    for spec in (spec_fixed, spec_solved):
        target = build_target(spec, (1, 8, 8), 10)
        source = build_source(target, spec)
        construct(target, source, x_tr, spec)
        scales[spec.output_gamma] = _output_scales(source)
    assert all(s.max() - s.min() <= 1e-12 * s.abs().max() for s in scales["fixed"])
    first = scales["solve"][0]
    assert first.max() - first.min() > 1e-3 * first.abs().max()


def test_expected_rel_error_beside_the_measured_one_for_a_gaussian_target():
    # target_epochs 0: the target keeps its random init, so W is independent of the Gaussian source
    row, tables = run(ConstructionSpec(width_ratio=0.5, target_epochs=0, sgd_epochs=0, hidden=8))
    layers = tables["construction_layers"]
    np.testing.assert_allclose(layers["expected_rel_error"], np.sqrt(1 - layers["dof"] / layers["P"]))
    assert row["expected_rel_error"] == pytest.approx(math.sqrt(0.5), rel=0.01)
    assert row["weight_residual"] == pytest.approx(row["expected_rel_error"], rel=0.1)


def test_only_bn_parameters_are_set_by_the_construction():
    spec = ConstructionSpec(width_ratio=1.2, **FAST)
    x_tr, _, _, _ = load_data(spec)
    target = build_target(spec, (1, 8, 8), 10)
    source = build_source(target, spec)
    fresh = build_source(target, spec)
    construct(target, source, x_tr, spec)
    changed = set()
    for (name, a), (_, b) in zip(source.state_dict().items(), fresh.state_dict().items()):
        if not torch.equal(a.to(b.dtype), b):
            changed.add(type(source.get_submodule(name.rsplit(".", 1)[0])).__name__)
    assert changed == {"BatchNorm1d"}


def test_relu_mlp_below_threshold_is_not_exact():
    row, _ = run(ConstructionSpec(width_ratio=0.5, **FAST))
    assert row["relative_error"] > 1e-2
    assert row["weight_residual"] > 1e-2


def test_conv_construction_on_a_tiny_cnn():
    spec = ConstructionSpec(target="cnn", cnn_channels=2, width_ratio=1.2, target_epochs=2, sgd_epochs=0,
                              batch_size=128)
    row, tables = run(spec)
    layers = tables["construction_layers"]
    assert list(layers["kind"]) == ["conv", "conv", "linear"]
    assert list(layers["P"]) == [2 * 1 * 9, 2 * 2 * 9, 2 * 10]
    assert row["relative_error"] < 1e-4 and row["argmax_agreement"] == 1.0
    assert tables["sgd_curve"]["epoch"].tolist() == [0]


def test_depth2_network_reproduces_target():
    row, tables = run(ConstructionSpec(source_depth=2, width_ratio=1.2, **FAST))
    layers = tables["construction_layers"]
    assert (layers["dof"] >= layers["P"]).all() and (layers["m"] < layers["P"]).all()
    assert row["relative_error"] < 1e-4
    assert row["solver_used"] == "lm-dense"


@pytest.mark.parametrize("act", ["tanh", "gelu"])
def test_other_activations_through_their_linear_region(act):
    row, _ = run(ConstructionSpec(activation=act, width_ratio=1.5, **FAST))
    assert row["relative_error"] < 1e-3


def test_run_is_deterministic():
    spec = ConstructionSpec(width_ratio=0.8, **FAST)
    r1, t1 = run(spec)
    r2, t2 = run(spec)
    timing = [k for k in r1 if k.endswith("_seconds")]
    assert {k: v for k, v in r1.items() if k not in timing} == {k: v for k, v in r2.items() if k not in timing}
    for name in t1:
        a, b = t1[name], t2[name]
        cols = [c for c in a.columns if not c.endswith("_seconds")]
        pd.testing.assert_frame_equal(a[cols], b[cols])


def test_cifar_cnn_target_reproduced_by_a_bn_only_source(cifar_root):
    """A small CNN trained on CIFAR-10 (a few hundred images) and a random source whose γ/β alone
    are solved to reproduce it: the same logits within the expected error (0 above the threshold:
    the float32 floor), so the same accuracy."""
    spec = ConstructionSpec.from_values(dict(target="cifar-cnn", dataset="cifar10", cnn_channels=4, train_size=300,
                                             test_size=100, target_epochs=5, width_ratio=1.2, output_gamma="solve",
                                             sgd_epochs=0))
    row, tables = run(spec, str(cifar_root))
    layers = tables["construction_layers"]
    assert list(layers["kind"]) == ["conv", "conv", "linear"]
    assert list(layers["P"]) == [4 * 3 * 9, 4 * 4 * 9, 4 * 4 * 4 * 10]
    assert row["expected_rel_error"] == 0.0 and row["weight_residual"] < 1e-9
    assert row["relative_error"] < 1e-4
    assert row["argmax_agreement"] >= 0.99
    assert abs(row["test_acc"] - row["target_test_acc"]) <= 0.01
    assert row["target_test_acc"] > 0.15  # the target learned something (10 classes; 0.22 when recorded)


# -- figures -------------------------------------------------------------------------------------------
def _synthetic_trials() -> pd.DataFrame:
    rows = []
    for act in ("relu", "tanh"):
        for depth in (1, 2):
            for ratio in (0.5, 0.9, 1.0, 1.1, 2.0):
                for seed in (0, 1):
                    err = 10 ** (-6 + seed * 0.1) if ratio > 1.0 else 0.3 * (1 - ratio) + 1e-4
                    rows.append({"trial_id": f"{act}{depth}{ratio}{seed}", "status": "done", "target": "mlp",
                                 "activation": act, "source_depth": depth, "width_ratio": ratio, "seed": seed,
                                 "relative_error": err, "test_acc": 0.95 - err, "target_test_acc": 0.95,
                                 "sgd_test_acc": 0.93, "sgd_relative_error": 0.4, "m_over_P": ratio + 1e-3,
                                 "condition_number": 1e4 if ratio == 1.0 else 30.0, "weight_residual": err / 10,
                                 "construction_minus_sgd_acc": 0.02 - err,
                                 "expected_rel_error": math.sqrt(max(0.0, 1 - ratio))})
    rows.append({"trial_id": "x", "status": "failed", "target": "mlp", "activation": "relu", "source_depth": 1,
                 "width_ratio": 3.0, "seed": 0})
    return pd.DataFrame(rows)


def test_figures_write_png_and_pdf(tmp_path):
    tables = {"trials": _synthetic_trials()}
    assert set(AC.FIGURES) == {"construction_error", "construction_condition", "construction_vs_sgd",
                               "depth_width_tradeoff"}
    for name, f in AC.FIGURES.items():
        paths = f(tables, tmp_path)
        assert sorted(p.suffix for p in paths) == [".pdf", ".png"], name
        assert all(p.exists() and p.stat().st_size > 1000 for p in paths), name
        assert paths[0].stem == name


def test_figures_draw_the_expected_error_beside_the_measured_one():
    from matplotlib.figure import Figure

    df = _synthetic_trials()
    df = df[(df["status"] == "done") & (df["activation"] == "relu") & (df["source_depth"] == 1)]
    ax = Figure().subplots()
    assert AC._expected(ax, df, "width_ratio", "C0")
    (line,) = ax.get_lines()
    np.testing.assert_allclose(line.get_xdata(), [0.5, 0.9])  # only below the threshold, where it is > 0
    np.testing.assert_allclose(line.get_ydata(), np.sqrt(1 - np.array([0.5, 0.9])))
    assert line.get_linestyle() == "--"
    assert not AC._expected(Figure().subplots(), df.drop(columns=["expected_rel_error"]), "width_ratio", "C0")


def test_figures_return_nothing_without_data(tmp_path):
    assert AC.fig({}, tmp_path) == []
    for f in AC.FIGURES.values():
        assert f({}, tmp_path) == []
        assert f({"trials": pd.DataFrame()}, tmp_path) == []
        assert f({"trials": pd.DataFrame({"trial_id": ["a"], "status": ["failed"], "width_ratio": [1.0]})},
                 tmp_path) == []
    assert not list(tmp_path.iterdir())


def test_analysis_does_not_import_torch():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(AC.__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = "import sys, sweeper.analysis.construction; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=root)
    assert out.stdout.strip() == "False"
