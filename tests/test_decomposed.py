"""BN decomposed at initialisation (issue 8): metrics, the decomposed norm, the trial, the figures."""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeper.analysis import decomposed as figs
from sweeper.errors import SweeperError
from sweeper.experiments.decomposed import ROW_COLUMNS
from sweeper.experiments.decomposed.metrics import cosine_matrix, layer_metrics, orthogonality_gap
from sweeper.experiments.decomposed.network import DecomposedMLP, DecomposedNorm
from sweeper.experiments.decomposed.run import run as run_trial
from sweeper.experiments.decomposed.spec import DecomposedSpec

torch.set_num_threads(1)

CIFAR_ROOT = Path("/work/shared/data/cifar10")


def run(spec, data_root=None):
    """(row, tables) of one decomposed trial."""
    result = run_trial(spec, data_root)
    return result.row, result.tables


def small(**kw) -> DecomposedSpec:
    base = dict(width=64, depth=12, batch=6, cosine_layers="0,5,-1")
    return DecomposedSpec(**{**base, **kw})


def outlier_config(n: int, d: int = 10, at: int | None = None, recentred: bool = False) -> torch.Tensor:
    """H (d, n): n-1 equal columns and one outlier at column `at` (default last).
    Post-ReLU form: cluster e0, outlier (n-1) e1. Recentred form: cluster c, outlier -(n-1) c."""
    at = n - 1 if at is None else at
    H = torch.zeros(d, n, dtype=torch.float64)
    if recentred:
        c = torch.arange(1, d + 1, dtype=torch.float64)
        H[:] = c[:, None]
        H[:, at] = -(n - 1) * c
        assert torch.allclose(H.mean(1), torch.zeros(d, dtype=torch.float64))
    else:
        H[0, :] = 1.0
        H[0, at] = 0.0
        H[1, at] = n - 1.0
    return H


# -- exact metric values on constructed matrices --------------------------------------------------

@pytest.mark.parametrize("n", [2, 5, 16])
def test_orthogonality_gap_exact_values(n):
    g = torch.Generator().manual_seed(n)
    Q, _ = torch.linalg.qr(torch.randn(40, n, generator=g, dtype=torch.float64))
    assert orthogonality_gap(Q) == pytest.approx(0.0, abs=1e-12)
    assert orthogonality_gap(3.7 * Q) == pytest.approx(0.0, abs=1e-12)  # equal norms, orthogonal
    u = torch.randn(40, 1, generator=g, dtype=torch.float64)
    assert orthogonality_gap(u.expand(40, n)) == pytest.approx(math.sqrt(1 - 1 / n), rel=1e-12)
    # the ideal outlier configuration: V = sqrt((n-1)(n-2))/n
    assert orthogonality_gap(outlier_config(n)) == pytest.approx(math.sqrt((n - 1) * (n - 2)) / n, abs=1e-12)
    # unequal norms make orthogonal columns non-isotropic: diag(1, 2) gives V = 3/(5 sqrt 2)
    assert orthogonality_gap(torch.diag(torch.tensor([1.0, 2.0], dtype=torch.float64))) == pytest.approx(
        3 / (5 * math.sqrt(2)), rel=1e-12)


@pytest.mark.parametrize("n", [3, 8, 16])
@pytest.mark.parametrize("at", [0, 2])
def test_metrics_of_the_ideal_outlier_configuration(n, at):
    m = layer_metrics(outlier_config(n, at=at))
    assert m["outlier_index"] == at
    assert m["norm_ratio"] == pytest.approx(n - 1, rel=1e-12)
    assert m["outlier_cos"] == pytest.approx(0.0, abs=1e-12)
    assert m["cluster_spread"] == pytest.approx(0.0, abs=1e-12)
    assert m["outlier_dist_ratio"] == pytest.approx(math.sqrt((n - 1) ** 2 + 1), rel=1e-12)
    assert m["orthogonality_gap"] == pytest.approx(math.sqrt((n - 1) * (n - 2)) / n, rel=1e-12)
    assert m["mean_cos"] == pytest.approx((n - 2) / n, rel=1e-12)


@pytest.mark.parametrize("n", [3, 16])
def test_metrics_after_recentering_are_antiparallel(n):
    """A recentred batch with one collapsed cluster: the outlier is -(n-1) times the centre."""
    m = layer_metrics(outlier_config(n, at=1, recentred=True))
    assert m["outlier_index"] == 1
    assert m["norm_ratio"] == pytest.approx(n - 1, rel=1e-12)
    assert m["outlier_cos"] == pytest.approx(1.0, rel=1e-12)
    assert m["cluster_spread"] == pytest.approx(0.0, abs=1e-12)
    assert m["outlier_dist_ratio"] == pytest.approx(n, rel=1e-12)


def test_cluster_spread_and_outlier_on_a_worked_example():
    # columns: (1,0), (1,0.2), (1,-0.2) form the cluster, (0,10) is the outlier
    H = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 0.2, -0.2, 10.0]], dtype=torch.float64)
    m = layer_metrics(H)
    assert m["outlier_index"] == 3
    # centre (1, 0): spread = mean(0, 0.2, 0.2) / 1
    assert m["cluster_spread"] == pytest.approx(0.4 / 3, rel=1e-12)
    assert m["norm_ratio"] == pytest.approx(10.0, rel=1e-12)
    assert m["outlier_cos"] == pytest.approx(0.0, abs=1e-12)
    # the outlier is the point far from the others, not the longest one: a short odd point
    H = torch.tensor([[10.0, 10.0, 10.0, 10.0, 0.0], [0.0, 0.5, -0.5, 0.1, 1.0]], dtype=torch.float64)
    m = layer_metrics(H)
    assert m["outlier_index"] == 4 and m["norm_ratio"] == pytest.approx(0.1, rel=1e-3)


def test_degenerate_representations_give_nan_not_errors():
    m = layer_metrics(torch.zeros(5, 4, dtype=torch.float64))
    assert m["outlier_index"] == -1 and all(math.isnan(m[k]) for k in m if k != "outlier_index")
    assert math.isnan(orthogonality_gap(torch.full((3, 3), float("inf"))))
    C = cosine_matrix(torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]], dtype=torch.float64))
    assert C[0, 2] == pytest.approx(1.0) and torch.isnan(C[1]).all()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(3, 9), scale=st.floats(1e-30, 1e30))
def test_metrics_are_scale_rotation_and_permutation_invariant(seed, n, scale):
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(12, n, generator=g, dtype=torch.float64)
    H[:, 0] *= 5.0  # a clear outlier, so the argmax is not a near-tie
    Q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    perm = torch.randperm(n, generator=g)
    base = layer_metrics(H)
    for other in (layer_metrics(scale * H), layer_metrics(Q @ H)):
        assert other["outlier_index"] == base["outlier_index"]
        for k in ("norm_ratio", "outlier_cos", "cluster_spread", "orthogonality_gap", "mean_cos"):
            assert other[k] == pytest.approx(base[k], rel=1e-9, abs=1e-12)
    permuted = layer_metrics(H[:, perm])
    assert int(perm[permuted["outlier_index"]]) == base["outlier_index"]
    assert permuted["norm_ratio"] == pytest.approx(base["norm_ratio"], rel=1e-9)
    C = cosine_matrix(H)
    U = H / H.norm(dim=0)
    assert torch.allclose(C, U.T @ U, atol=1e-12) and torch.allclose(C.diagonal(), torch.ones(n, dtype=torch.float64))


# -- the decomposed normalisation -----------------------------------------------------------------

def _batch(n=32, d=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 3.0 + 2.0 * torch.randn(n, d, generator=g, dtype=torch.float64)


def test_norm_switches():
    x = _batch()
    rc = DecomposedNorm(rc=True, rs="none")(x)
    assert torch.allclose(rc.mean(0), torch.zeros(20, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(rc.std(0), x.std(0))  # rc alone does not rescale
    std = DecomposedNorm(rc=False, rs="std", eps=1e-12)(x)
    assert torch.allclose(std.std(0, unbiased=False), torch.ones(20, dtype=torch.float64), atol=1e-9)
    assert (std.mean(0) > 0.5).all()  # rs alone does not recentre
    row = DecomposedNorm(rc=False, rs="rownorm", eps=1e-12)(x)
    assert torch.allclose(row.norm(dim=0), torch.full((20,), math.sqrt(32), dtype=torch.float64), atol=1e-9)
    glob = DecomposedNorm(rc=False, rs="global", eps=1e-12)(x)
    assert float(glob.pow(2).mean()) == pytest.approx(1.0, rel=1e-9)
    assert torch.allclose(glob / glob[0, 0], x / x[0, 0])  # one scalar: no direction changes
    assert torch.equal(DecomposedNorm(rc=False, rs="none")(x), x)
    both = DecomposedNorm(rc=True, rs="std", eps=1e-5)(x)
    bn = torch.nn.BatchNorm1d(20, affine=False, eps=1e-5, dtype=torch.float64).train()(x)
    assert torch.allclose(both, bn, atol=1e-12)
    with pytest.raises(SweeperError, match="rescaling"):
        DecomposedNorm(rs="layer")


# -- the network and the trial --------------------------------------------------------------------

def test_weights_are_deterministic_gaussian_and_independent_of_depth():
    a = DecomposedMLP(width=256, depth=3, rc=True, rs="none", nl="relu", seed=4)
    b = DecomposedMLP(width=256, depth=50, rc=True, rs="none", nl="relu", seed=4)
    assert torch.equal(a.weight(2), b.weight(2))
    assert not torch.equal(a.weight(1), a.weight(2))
    w = b.weight(7)
    assert float(w.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(w.var()) * 256 == pytest.approx(1.0, rel=0.03)  # N(0, 1/d)
    f32 = DecomposedMLP(width=256, depth=3, rc=True, rs="none", nl="relu", seed=4, dtype=torch.float32)
    assert torch.equal(f32.weight(2).double(), a.weight(2))  # the same network in both dtypes


def test_renormalisation_is_exact_for_homogeneous_layers():
    net = DecomposedMLP(width=64, depth=20, rc=True, rs="none", nl="relu", seed=1)
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    faithful = net(x)
    *_, (layer, _, out, log_scale) = net.trace(x)
    assert layer == 20 and log_scale < -3  # it did renormalise
    assert torch.allclose(out * math.exp(log_scale), faithful, rtol=1e-10, atol=0)


def test_run_tables_have_the_promised_columns_and_dtypes():
    spec = small(record_every=5, cosine_layers="0,5,-1,99")
    row, tables = run(spec)
    layers, cosine = tables["layers"], tables["cosine"]
    for col in ["layer", "rc", "rs", "nl", "n", "d", "norm_ratio", "outlier_cos", "cluster_spread",
                "orthogonality_gap", "outlier_index", "mean_cos", "log10_rms"]:
        assert col in layers.columns
    assert list(layers["layer"]) == [0, 5, 10, 12]  # the stride, plus the last layer
    assert (layers["n"] == 6).all() and (layers["d"] == 64).all() and layers["rc"].all()
    assert set(layers["rs"]) == {"none"} and set(layers["nl"]) == {"relu"}
    assert all(dt != object for dt in layers.dtypes) and all(dt != object for dt in cosine.dtypes)
    assert sorted(cosine["layer"].unique()) == [0, 5, 12]  # 99 is beyond depth: skipped
    assert len(cosine) == 3 * 36
    c = cosine[cosine["layer"] == 12].pivot(index="i", columns="j", values="cos").to_numpy()
    assert np.allclose(c, c.T) and np.allclose(np.diag(c), 1.0)
    for k in ["final_norm_ratio", "final_outlier_cos", "final_cluster_spread", "final_orthogonality_gap",
              "final_outlier_index", "outlier_stable_from", "finite", "seconds"]:
        assert k in row
    assert row["final_norm_ratio"] == layers["norm_ratio"].iloc[-1]
    assert {k: type(v) for k, v in row.items()} == ROW_COLUMNS
    assert "trial_id" not in layers.columns and "trial_id" not in row


def test_run_is_a_seeded_pure_function():
    spec = small(rs="std", nl="tanh")
    (r1, t1), (r2, t2) = run(spec), run(spec)
    for name in ("layers", "cosine"):
        pd.testing.assert_frame_equal(t1[name], t2[name])
    r1.pop("seconds"), r2.pop("seconds")
    assert r1 == r2
    _, t3 = run(dataclasses.replace(spec, seed=1))
    assert not t3["layers"]["orthogonality_gap"].equals(t1["layers"]["orthogonality_gap"])
    # float32 runs the same network: early layers agree closely
    _, t4 = run(dataclasses.replace(spec, dtype="float32"))
    assert np.allclose(t4["layers"]["orthogonality_gap"], t1["layers"]["orthogonality_gap"], rtol=1e-4)


def test_probe_normed_measures_before_the_nonlinearity():
    # after recentering the batch mean is zero, so the outlier is exactly -(n-1) times the centre
    _, t = run(small(probe="normed", rs="none", nl="relu"))
    deep = t["layers"][t["layers"]["layer"] > 0]
    assert np.allclose(deep["norm_ratio"], 5.0) and np.allclose(deep["outlier_cos"], 1.0)


def test_float32_relu_without_rs_stays_finite_at_depth_300():
    # the true scale falls ~1/sqrt(2) per layer: 1e-57 at depth 300, far below float32's range
    row, t = run(DecomposedSpec(width=32, depth=300, batch=8, dtype="float32", record_every=50,
                                cosine_layers=""))
    assert row["finite"] and row["final_log10_rms"] < -40
    assert np.isfinite(t["layers"]["norm_ratio"]).all()


def test_spec_validation_and_resolution():
    assert DecomposedSpec.from_values({"nl": "linear", "rs": "bn"}).nl == "identity"
    assert DecomposedSpec.from_values({"rs": "bn"}).rs == "std"
    for values, field in [({"nl": "relux"}, "nl"), ({"rs": "layer"}, "rs"), ({"inputs": "mnist"}, "inputs"),
                          ({"batch": 1}, "batch"), ({"cosine_layers": "0,x"}, "cosine_layers"),
                          ({"input_corr": 0.5, "inputs": "digits"}, "input_corr"),
                          ({"dtype": "float16"}, "dtype"), ({"probe": "pre"}, "probe")]:
        with pytest.raises(SweeperError) as e:
            DecomposedSpec.from_values(values)
        assert e.value.where == field
    assert DecomposedSpec(depth=50, cosine_layers="-1, 0,10,10,100").cosine_layer_list() == [0, 10, 50]
    for f in dataclasses.fields(DecomposedSpec):
        assert f.type in ("bool", "int", "float", "str") and f.default is not None
    assert figs.SPEC_FIELDS == tuple(f.name for f in dataclasses.fields(DecomposedSpec))
    assert figs.EXPERIMENT == DecomposedSpec.experiment


def test_image_inputs_digits():
    spec = small(inputs="digits", batch=8, depth=3)
    row, t = run(spec)
    first = t["layers"].iloc[0]
    assert first["mean_cos"] > 0.3  # raw images are far from orthogonal
    assert first["log10_rms"] == pytest.approx(0.0, abs=1e-9)  # input_scale = 1
    _, t2 = run(spec)
    pd.testing.assert_frame_equal(t["layers"], t2["layers"])


@pytest.mark.skipif(not (CIFAR_ROOT / "cifar-10-batches-py").is_dir(), reason="no local CIFAR-10")
def test_image_inputs_cifar10():
    with pytest.raises(SweeperError):
        run(small(inputs="cifar10", depth=1))
    row, t = run(small(inputs="cifar10", depth=2), data_root=str(CIFAR_ROOT))
    assert t["layers"]["mean_cos"].iloc[0] > 0.3 and row["finite"]


# -- the papers' findings, at small scale ----------------------------------------------------------

def test_rc_and_relu_make_one_orthogonal_outlier_at_norm_ratio_n_minus_1():
    n = 16
    finals = [run(DecomposedSpec(batch=n, width=128, depth=100, seed=s, record_every=100, cosine_layers=""))[0]
              for s in range(3)]
    for r in finals:
        assert 0.6 * (n - 1) < r["final_norm_ratio"] < 1.4 * (n - 1)
        assert r["final_outlier_cos"] < 0.1
        assert r["final_cluster_spread"] < 0.8
    # the input batch is nothing like it
    _, t = run(DecomposedSpec(batch=n, width=128, depth=0, cosine_layers=""))
    assert t["layers"]["norm_ratio"].iloc[0] < 6


def test_rescaling_per_neuron_destroys_the_outlier_configuration():
    base = dict(batch=16, width=128, depth=30, inputs="outlier", input_noise=1e-6, record_every=30,
                cosine_layers="")
    kept = run(DecomposedSpec(rc=True, rs="none", **base))[0]
    assert kept["final_outlier_index"] == 15 and kept["outlier_stable_from"] == 0
    assert kept["final_outlier_cos"] < 0.05 and kept["final_norm_ratio"] > 9
    broken = run(DecomposedSpec(rc=True, rs="std", **base))[0]
    assert broken["final_norm_ratio"] < 5 and broken["final_outlier_cos"] > 0.2


def test_rs_only_linear_network_orthogonality_floor_shrinks_with_width():
    floors = {}
    for d in (32, 128, 512):
        vals = []
        for seed in range(2):
            _, t = run(DecomposedSpec(rc=False, rs="rownorm", nl="identity", width=d, depth=60, batch=8,
                                      input_corr=0.9, seed=seed, cosine_layers=""))
            lay = t["layers"]
            assert lay["orthogonality_gap"].iloc[0] > 0.5  # correlated inputs
            vals.append(lay[lay["layer"] >= 40]["orthogonality_gap"].mean())
        floors[d] = float(np.mean(vals))
    assert floors[32] > floors[128] > floors[512]
    slope = np.polyfit(np.log(list(floors)), np.log(list(floors.values())), 1)[0]
    assert -0.75 < slope < -0.3  # ~ 1/sqrt(d)


# -- figures --------------------------------------------------------------------------------------

def _synthetic_tables() -> dict[str, pd.DataFrame]:
    specs = [DecomposedSpec(rc=rc, rs=rs, nl=nl, width=32, depth=8, batch=5, seed=seed, cosine_layers="0,-1")
             for rc in (True, False) for rs, nl in (("none", "relu"), ("std", "identity")) for seed in (0, 1)]
    specs += [DecomposedSpec(rc=False, rs="rownorm", nl="identity", width=w, depth=8, batch=5, seed=seed,
                             cosine_layers="") for w in (16, 64) for seed in (0, 1)]
    trials, layers, cosine = [], [], []
    for spec in specs:
        row, t = run(spec)
        trials.append({"trial_id": spec.trial_id, "experiment": "decomposed", "status": "done",
                       **spec.to_row(), **row})
        layers.append(t["layers"].assign(trial_id=spec.trial_id))
        cosine.append(t["cosine"].assign(trial_id=spec.trial_id))
    trials.append({**specs[0].to_row(), "seed": 9, "trial_id": "failed0", "experiment": "decomposed",
                   "status": "failed"})
    trials.append({"trial_id": "train0", "experiment": "train", "status": "done", "width": 999})
    return {"trials": pd.DataFrame(trials), "layers": pd.concat(layers, ignore_index=True),
            "cosine": pd.concat(cosine, ignore_index=True)}


def test_figures_write_png_and_pdf(tmp_path):
    tables = _synthetic_tables()
    assert set(figs.FIGURES) == {"decomposed_metrics", "decomposed_cosine", "orthogonality_floor"}
    for name, fig in figs.FIGURES.items():
        paths = fig(tables, tmp_path / name)
        assert paths, name
        assert {p.suffix for p in paths} == {".png", ".pdf"}
        for p in paths:
            assert p.is_file() and p.stat().st_size > 1000
    # trials differing in width are separate settings: one metrics figure per width
    metric_pngs = sorted(p.name for p in (tmp_path / "decomposed_metrics").glob("*.png"))
    assert metric_pngs == ["decomposed_metrics__width=16.png", "decomposed_metrics__width=32.png",
                           "decomposed_metrics__width=64.png"]
    assert figs.component_label(True, "std", "relu") == "RC + RS(std) + relu"
    assert figs.component_label(False, "none", "identity") == "linear"


def test_figures_return_nothing_without_their_data(tmp_path):
    tables = _synthetic_tables()
    empty = {"trials": tables["trials"].iloc[:0]}
    no_linear = {k: v for k, v in tables.items()}
    no_linear["trials"] = tables["trials"][tables["trials"]["nl"] == "relu"]
    for fig in figs.FIGURES.values():
        assert fig(empty, tmp_path) == []
        assert fig({}, tmp_path) == []
    assert figs.orthogonality_floor(no_linear, tmp_path) == []
    assert figs.cosine_heatmaps({"trials": tables["trials"], "layers": tables["layers"]}, tmp_path) == []
    assert not any(tmp_path.iterdir())


def test_analysis_does_not_import_torch():
    src = Path(figs.__file__).read_text()
    assert "import torch" not in src and "from torch" not in src
