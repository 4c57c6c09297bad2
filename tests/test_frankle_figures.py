"""Frankle et al.'s figures and Table 1 from a small real store (digits, 1 epoch, tiny ResNets)."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from sweeper.analysis import figures
from sweeper.analysis import frankle
from sweeper.analysis.frankle import common, gamma, units
from sweeper.analysis.draw import LazyTables, draw_study
from sweeper.store import Store
from sweeper.study import load_study
from sweeper.experiments.train.spec import TrainSpec
from sweeper.trial import TrialContext, execute

from conftest import REPO

STUDY = "frankle-test"
# a deeper series (width 4: depth 8, 14) and a wider one (depth 8: width 4, 8)
MODELS = [(8, 4), (14, 4), (8, 8)]
SUBSETS = ["all", "all-but-bn", "bn", "random"]


def spec(depth, width, trainable, seed, **extra):
    return TrainSpec.from_values(dict(
        dataset="digits", depth=depth, width=width, trainable=trainable, seed=seed, epochs=1,
        batch_size=64, augment="none", train_size=600, measure=["bn", "clamp", "dead_relu"], **extra))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """24 real trials (3 networks x 4 subsets x 2 seeds), committed through the trial path."""
    store = Store(tmp_path_factory.mktemp("store"))
    store.ensure_writable()
    ctx = TrialContext(study=STUDY, store=store)
    for (depth, width), subset, seed in itertools.product(MODELS, SUBSETS, [0, 1]):
        row = execute(spec(depth, width, subset, seed), ctx, threads=1)
        assert row["status"] == "done", row["error"]
    return store


def test_every_frankle_figure_is_registered():
    registry = figures()
    for name in frankle.FIGURES:
        assert name in registry
    assert len(frankle.FIGURES) == 13


def test_every_figure_writes_files(store, tmp_path):
    drawn = draw_study(store, STUDY, out=tmp_path, names=list(frankle.FIGURES))
    assert not drawn.skipped, drawn.skipped
    for name in frankle.FIGURES:
        files = drawn.written[f"{STUDY}/{name}"]
        assert files and all(f.exists() and f.stat().st_size > 0 for f in files)
        if name == "table1_params":
            assert {f.suffix for f in files} == {".csv", ".md"}
        else:
            assert {".png", ".pdf"} <= {f.suffix for f in files}
            png = next(f for f in files if f.suffix == ".png")
            assert png.stat().st_size < 1_000_000


def test_figures_skip_cleanly_without_data(store, tmp_path):
    for name, draw in frankle.FIGURES.items():
        assert draw({}, tmp_path) == [], name
        assert draw({"trials": pd.DataFrame()}, tmp_path) == [], name
    # trials alone: the figures that need bn, clamp or dead_relu skip, the others draw
    trials = store.read(STUDY)
    only_trials = {"trials": trials}
    for name in ("gamma_distribution", "gamma_sparsity", "clamp_accuracy", "dead_relu", "gamma_sparsity_vs_bn_params",
                 "clamp_accuracy_vs_fraction", "dead_relu_vs_bn_params", "beta_distribution", "gamma_by_layer"):
        assert frankle.FIGURES[name](only_trials, tmp_path) == [], name
    # without the all-but-bn control there is no Fig. 1
    no_control = {"trials": trials[trials["trainable"] != "all-but-bn"]}
    assert frankle.all_vs_all_but_bn(no_control, tmp_path) == []
    # another experiment's trials are not Frankle's
    other = {"trials": pd.DataFrame({"trial_id": ["x"], "status": ["done"], "experiment": ["decomposed"],
                                     "depth": [3], "width": [4]})}
    for name, draw in frankle.FIGURES.items():
        assert draw(other, tmp_path) == [], name
    assert not list(tmp_path.glob("*.png"))


def test_table1_equals_the_trials_table(store, tmp_path):
    files = frankle.table1_params(LazyTables(store, STUDY), tmp_path)
    table = pd.read_csv(next(f for f in files if f.suffix == ".csv"))
    trials = store.read(STUDY)
    assert sorted(table["model"]) == sorted(trials["model"].unique())
    for _, row in table.iterrows():
        rows = trials[trials["model"] == row["model"]]
        for column, group in units.PARAM_COLUMNS.items():
            assert rows[column].nunique() == 1
            assert row[group] == rows[column].iloc[0]
    # and the model's own count: resnet-8-4 on digits (1 channel in, 10 classes out)
    r = table.set_index("model").loc["resnet-8-4"]
    assert (r["total"], r["batchnorm"], r["output"], r["shortcut"]) == (5142, 168, 170, 160)
    assert table["model"].tolist() == ["resnet-8-4", "resnet-14-4", "resnet-8-8"]  # deeper, then wider
    md = next(f for f in files if f.suffix == ".md").read_text()
    assert "| resnet-8-8 | 8 | 8 | 19,810 | 336 | 330 | 640 |" in md
    # the paper's percentage rows: each group as a share of all parameters
    for group in ("batchnorm", "output", "shortcut"):
        assert np.allclose(table[f"{group}_pct"], 100 * table[group] / table["total"], atol=5e-4)
    assert "| parameters | resnet-8-4 | resnet-14-4 | resnet-8-8 |" in md
    assert "| Total | 5,142 |" in md
    assert f"| BatchNorm (%) | {100 * 168 / 5142:.2f}% |" in md  # 3.27%
    assert f"| Shortcut (%) | {100 * 160 / 5142:.2f}% |" in md


def test_gamma_sparsity_is_exact_on_a_constructed_table():
    bn = pd.DataFrame({
        "trial_id": ["a"] * 5 + ["b"] * 4,
        "gamma": [0.0, -0.005, 0.01, 0.2, -0.3, 0.5, 0.5, -0.049, 1.0],
        "gamma_init": [0.5, 0.005, 0.5, 0.5, 0.5, 0.04, 0.5, 0.5, 0.5],
    })
    s = gamma.gamma_sparsity(bn, thresholds=(0.01, 0.05, 0.3)).set_index(["trial_id", "threshold"])
    # |γ| < t strictly (the clamp measure's rule): 0.01 itself is not below 0.01
    assert s.loc[("a", 0.01), "fraction"] == 2 / 5
    assert s.loc[("a", 0.05), "fraction"] == 3 / 5
    assert s.loc[("a", 0.3), "fraction"] == 4 / 5
    assert s.loc[("b", 0.01), "fraction"] == 0.0
    assert s.loc[("b", 0.05), "fraction"] == 1 / 4
    assert s.loc[("a", 0.01), "fraction_init"] == 1 / 5
    assert s.loc[("b", 0.05), "fraction_init"] == 1 / 4
    assert s.loc[("a", 0.3), "channels"] == 5


def test_gamma_sparsity_matches_the_clamp_measure(store):
    """Fig. 5's derived fraction and the clamp table's fraction_clamped count the same γ."""
    bn, clamp = store.read(STUDY, "bn"), store.read(STUDY, "clamp")
    thresholds = sorted(t for t in clamp["threshold"].unique() if t > 0)
    derived = gamma.gamma_sparsity(bn, thresholds).set_index(["trial_id", "threshold"])["fraction"]
    measured = clamp[clamp["threshold"] > 0].set_index(["trial_id", "threshold"])["fraction_clamped"]
    pd.testing.assert_series_equal(derived.sort_index(), measured.sort_index(), check_names=False)


def test_dead_units_weighted_by_layer_size():
    dead = pd.DataFrame({"trial_id": ["a", "a"], "units": [100, 300], "channels": [4, 12],
                         "dead_unit_fraction": [0.5, 0.1], "dead_channel_fraction": [0.25, 0.0]})
    row = units.dead_units(dead).iloc[0]
    assert row["dead_units"] == pytest.approx((50 + 30) / 400)
    assert row["dead_channels"] == pytest.approx(1 / 16)


def test_series_split_deeper_and_wider():
    frame = pd.DataFrame({"depth": [14, 32, 56, 14, 14], "width": [16, 16, 16, 32, 64]})
    kinds = {k: sorted(zip(rows["depth"], rows["width"])) for k, rows, _ in common.series(frame)}
    assert kinds["deeper"] == [(14, 16), (32, 16), (56, 16)]
    assert kinds["wider"] == [(14, 16), (14, 32), (14, 64)]


def test_a_varying_setting_gets_its_own_files(store, tmp_path):
    trials = store.read(STUDY)
    other = trials.assign(norm="layer", trial_id=trials["trial_id"] + "-l")
    both = pd.concat([trials, other], ignore_index=True)
    # all-but-bn's pinned bn_init is implied by the subset, not a setting of its own
    assert common.setting_fields(both) == ["norm"]
    files = frankle.accuracy_vs_bn_params({"trials": both}, tmp_path)
    names = sorted(f.name for f in files if f.suffix == ".png")
    assert names == ["accuracy_vs_bn_params__norm=batch.png", "accuracy_vs_bn_params__norm=layer.png"]


@pytest.mark.parametrize("path", ["studies/depth_vs_width.py", "studies/sparsity.py"])
def test_study_files_load_with_a_cpu_sized_quick_variant(path):
    full, quick = load_study(REPO / path), load_study(REPO / path, quick=True)
    assert quick.name == f"{full.name}-quick" and quick.resources == {"cpu": 1, "gpu": 0}
    specs = quick.specs()
    assert all(s.dataset == "cifar10" and 0 < s.train_size <= 5000 and s.epochs <= 8 for s in specs)
    assert {s.seed for s in specs} == {0, 1}
    assert all(name in figures() for name in full.figures)


def test_imagenet_study_streams_full_resolution_imagenet():
    full, quick = load_study(REPO / "studies/imagenet.py"), load_study(REPO / "studies/imagenet.py", quick=True)
    specs = full.specs()
    assert {s.model for s in specs} == {f"imagenet-resnet-{d}" for d in (18, 34, 50, 101, 152, 200)}
    assert {s.dataset for s in specs} == {"imagenet224"} and {s.trainable for s in specs} == {"all", "bn"}
    s = specs[0]
    assert (s.epochs, s.batch_size, s.lr) == (90, 1024, 0.4)
    assert [round(m * s.epochs) for m in s.milestones] == [30, 60, 80]
    assert [(q.model, q.train_size, q.epochs) for q in quick.specs()] == [("imagenet-resnet-18", 1000, 2)] * 2
    assert all(name in figures() for name in full.figures)


def test_depth_vs_width_is_the_papers_grid():
    study = load_study(REPO / "studies/depth_vs_width.py")
    specs = study.specs()
    models = {s.model for s in specs}
    assert {f"resnet-{d}" for d in (14, 32, 56, 110, 218, 434, 866)} <= models
    assert {f"wrn-14-{k}" for k in (2, 4, 8, 16, 32)} <= models  # wrn-14-1 is resnet-14
    assert {s.trainable for s in specs} == {"all", "bn", "output", "bn+output", "all-but-bn", "random"}
    s = specs[0]
    assert (s.epochs, s.batch_size, s.lr, s.momentum, s.weight_decay, s.milestones) == (
        160, 128, 0.1, 0.9, 1e-4, (0.5, 0.75))
    assert len(specs) == 12 * 6 * 3
    assert np.all([sp.measure == ("bn",) for sp in specs])


def test_sparsity_measures_gamma_clamping_and_dead_relus():
    for quick in (False, True):
        specs = load_study(REPO / "studies/sparsity.py", quick=quick).specs()
        assert {s.trainable for s in specs} == {"bn", "all"}
        assert all(set(s.measure) == {"bn", "clamp", "dead_relu"} for s in specs)


# -- the figures as drawn: their panels and lines, checked against pandas on the store ---------------
@pytest.fixture
def kept(monkeypatch):
    """Keep the figures `save` would close, to read their axes: kept(name) -> that Figure."""
    from sweeper.analysis.style import plt

    close = plt.close
    monkeypatch.setattr(plt, "close", lambda *a, **k: None)

    def get(label):
        figs = [plt.figure(n) for n in plt.get_fignums()]
        (fig,) = [f for f in figs if f.get_label() == label]
        return fig

    yield get
    close("all")


def panels(fig) -> dict:
    """A figure's titled axes by title."""
    return {ax.get_title(): ax for ax in fig.axes if ax.get_visible() and ax.get_title()}


def lines(ax) -> dict:
    """label -> (x, y) of each errorbar line of an axes."""
    out = {}
    for c in ax.containers:
        line = c.lines[0]
        out[c.get_label()] = (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))
    return out


def per_seed_mean(frame: pd.DataFrame, x: str, value: str) -> tuple[np.ndarray, np.ndarray]:
    m = frame.groupby(x)[value].mean().sort_index()
    return m.index.to_numpy(float), m.to_numpy(float)


def test_fig5_against_depth_and_width_one_line_per_threshold(store, tmp_path, kept):
    files = frankle.FIGURES["gamma_sparsity"](LazyTables(store, STUDY), tmp_path)
    assert {f.name for f in files} == {"gamma_sparsity.png", "gamma_sparsity.pdf", "gamma_sparsity.csv"}
    p = panels(kept("gamma_sparsity"))
    # γ trains under all and bn only (all-but-bn pins it, random leaves it at its start)
    assert sorted(p) == ["BN only (γ, β): deeper", "BN only (γ, β): wider", "all parameters: deeper",
                         "all parameters: wider"]
    trials, bn = store.read(STUDY), store.read(STUDY, "bn")
    bn = bn.merge(trials[["trial_id", "trainable", "depth", "width", "seed"]], on="trial_id")
    for title, subset, series, x in [("BN only (γ, β): deeper", "bn", "width", "depth"),
                                     ("all parameters: wider", "all", "depth", "width")]:
        ax = p[title]
        assert ax.get_xlabel().startswith(x)
        drawn = lines(ax)
        assert sorted(drawn) == [f"|γ| < {t:g}" for t in common.SPARSITY_THRESHOLDS]
        rows = bn[(bn["trainable"] == subset) & (bn[series] == (4 if series == "width" else 8))]
        for t in common.SPARSITY_THRESHOLDS:
            share = rows.assign(small=rows["gamma"].abs() < t).groupby(["trial_id", x])["small"].mean().reset_index()
            share["pct"] = share["small"] * 100
            ex, ey = per_seed_mean(share, x, "pct")
            dx, dy = drawn[f"|γ| < {t:g}"]
            assert np.array_equal(dx, ex) and np.allclose(dy, ey), (title, t)


def test_fig6_against_depth_and_width_one_line_per_threshold(store, tmp_path, kept):
    assert frankle.FIGURES["clamp_accuracy"](LazyTables(store, STUDY), tmp_path)
    p = panels(kept("clamp_accuracy"))
    assert sorted(p) == ["BN only (γ, β): deeper", "BN only (γ, β): wider", "all parameters: deeper",
                         "all parameters: wider"]
    trials, clamp = store.read(STUDY), store.read(STUDY, "clamp")
    clamp = clamp.merge(trials[["trial_id", "trainable", "depth", "width", "test_acc"]], on="trial_id",
                        suffixes=("", "_trained"))
    clamp["change"] = (clamp["test_acc"] - clamp["test_acc_trained"]) * 100
    thresholds = sorted(t for t in clamp["threshold"].unique() if t > 0)  # t = 0 clamps nothing: no line
    drawn = lines(p["BN only (γ, β): wider"])
    assert sorted(drawn) == sorted(f"t = {t:g}" for t in thresholds)
    rows = clamp[(clamp["trainable"] == "bn") & (clamp["depth"] == 8)]
    for t in thresholds:
        ex, ey = per_seed_mean(rows[rows["threshold"] == t], "width", "change")
        dx, dy = drawn[f"t = {t:g}"]
        assert np.array_equal(dx, ex) and np.allclose(dy, ey), t
    # the clamped-share version stays, as an extra
    assert frankle.FIGURES["clamp_accuracy_vs_fraction"](LazyTables(store, STUDY), tmp_path)


def test_fig7_against_depth_and_width_one_line_per_subset(store, tmp_path, kept):
    assert frankle.FIGURES["dead_relu"](LazyTables(store, STUDY), tmp_path)
    p = panels(kept("dead_relu"))
    assert sorted(p) == ["dead channels: deeper", "dead channels: wider", "dead units (per position): deeper",
                         "dead units (per position): wider"]
    trials, dead = store.read(STUDY), store.read(STUDY, "dead_relu")
    dead = dead.assign(du=dead["dead_unit_fraction"] * dead["units"], dc=dead["dead_channel_fraction"] * dead["channels"])
    per = dead.groupby("trial_id")[["du", "units", "dc", "channels"]].sum()
    per = pd.DataFrame({"units_pct": 100 * per["du"] / per["units"], "channels_pct": 100 * per["dc"] / per["channels"]})
    per = per.reset_index().merge(trials[["trial_id", "trainable", "depth", "width"]], on="trial_id")
    for title, value, series, x in [("dead units (per position): deeper", "units_pct", "width", "depth"),
                                    ("dead channels: wider", "channels_pct", "depth", "width")]:
        drawn = lines(p[title])
        assert sorted(drawn) == sorted(common.subset_label(s) for s in SUBSETS)
        for subset in SUBSETS:
            rows = per[(per["trainable"] == subset) & (per[series] == (4 if series == "width" else 8))]
            ex, ey = per_seed_mean(rows, x, value)
            dx, dy = drawn[common.subset_label(subset)]
            assert np.array_equal(dx, ex) and np.allclose(dy, ey), (title, subset)
    assert frankle.FIGURES["dead_relu_vs_bn_params"](LazyTables(store, STUDY), tmp_path)


def test_beta_distribution_draws_the_subsets_that_train_beta(store, tmp_path, kept):
    assert frankle.FIGURES["beta_distribution"](LazyTables(store, STUDY), tmp_path)
    fig = kept("beta_distribution")
    p = panels(fig)
    assert sorted(p) == ["resnet-14-4 (D 14, W 4)", "resnet-8-4 (D 8, W 4)", "resnet-8-8 (D 8, W 8)"]
    bn = store.read(STUDY, "bn").merge(store.read(STUDY)[["trial_id", "trainable", "model"]], on="trial_id")
    # β trains under all and bn; all-but-bn pins it at 0, random leaves it there
    assert (bn.loc[bn["trainable"].isin(["all-but-bn", "random"]), "beta"] == 0).all()
    span = max(abs(v) for v in np.nanpercentile(bn.loc[bn["trainable"].isin(["all", "bn"]), "beta"], [0.5, 99.5]))
    bins = np.linspace(-span, span, 41)
    ax = p["resnet-14-4 (D 14, W 4)"]
    steps = ax.patches
    assert len(steps) == 2  # one outline per subset that trains β
    for patch, subset in zip(steps, ["all", "bn"]):
        expected, _ = np.histogram(bn.loc[(bn["model"] == "resnet-14-4") & (bn["trainable"] == subset), "beta"],
                                   bins=bins, density=True)
        assert np.isclose(patch.get_xy()[:, 1].max(), expected.max()), subset
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["at initialisation (β = 0)", "all parameters", "BN only (γ, β)"]


def test_gamma_by_layer_is_each_layers_mean_abs_gamma(store, tmp_path, kept):
    files = frankle.FIGURES["gamma_by_layer"](LazyTables(store, STUDY), tmp_path)
    csv = pd.read_csv(next(f for f in files if f.suffix == ".csv"))
    bn = store.read(STUDY, "bn")
    expected = bn.assign(a=bn["gamma"].abs()).groupby(["trial_id", "layer_index"])["a"].mean()
    got = csv.set_index(["trial_id", "layer_index"])["mean_abs_gamma"]
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)
    assert {"stage", "block", "role", "layer"} <= set(csv)
    p = panels(kept("gamma_by_layer"))
    ax = p["resnet-14-4 (D 14, W 4)"]
    drawn = lines(ax)
    assert len(drawn) == len(SUBSETS)
    trials = store.read(STUDY)
    bn_ids = trials.loc[(trials["model"] == "resnet-14-4") & (trials["trainable"] == "bn"), "trial_id"]
    ey = expected.loc[list(bn_ids)].groupby(level="layer_index").mean()
    (dx, dy), = [v for v in drawn.values() if len(v[1]) == len(ey) and np.allclose(v[1], ey.to_numpy())]
    assert np.array_equal(dx, ey.index.to_numpy(float))
    # stage boundaries: resnet-14-4 has 3 stages after its stem, so 3 dotted lines
    assert sum(1 for line in ax.get_lines() if line.get_linestyle() == ":") == 3


def test_imagenet_trials_get_top5_panels_beside_top1(store, tmp_path, kept):
    """ImageNet panels: trials of an ImageNet dataset draw top-5 beside top-1 (recorded by every
    train trial as `test_top5`), in their own files when the study also holds CIFAR-sized ones."""
    trials = store.read(STUDY)
    assert trials["test_top5"].notna().all()
    imagenet = trials.assign(dataset="imagenet224", trial_id=trials["trial_id"] + "-in")
    both = pd.concat([trials, imagenet], ignore_index=True)
    files = frankle.accuracy_vs_depth_width({"trials": both}, tmp_path)
    names = sorted(f.name for f in files if f.suffix == ".png")
    assert names == ["accuracy_vs_depth_width__dataset=digits.png", "accuracy_vs_depth_width__dataset=imagenet224.png"]
    small = kept("accuracy_vs_depth_width__dataset=digits")
    assert [ax.get_ylabel() for ax in small.axes if ax.get_ylabel()] == ["test accuracy (%)"]
    fig = kept("accuracy_vs_depth_width__dataset=imagenet224")
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()] == ["top-1 test accuracy (%)",
                                                                        "top-5 test accuracy (%)"]
    top5 = next(ax for ax in fig.axes if ax.get_ylabel() == "top-5 test accuracy (%)")  # deeper series
    (x, y), = [(c.lines[0].get_xdata(), c.lines[0].get_ydata()) for c in top5.containers
               if c.lines[0].get_color() == common.subset_colour("bn")]
    rows = imagenet[(imagenet["trainable"] == "bn") & (imagenet["width"] == 4)]
    ex, ey = per_seed_mean(rows.assign(pct=rows["test_top5"] * 100), "depth", "pct")
    assert np.array_equal(np.asarray(x, float), ex) and np.allclose(y, ey)
    files = frankle.accuracy_vs_bn_params({"trials": imagenet}, tmp_path)
    assert [ax.get_ylabel() for ax in kept("accuracy_vs_bn_params").axes] == ["top-1 test accuracy (%)",
                                                                              "top-5 test accuracy (%)"]
    # top-5 not recorded (an older store): top-1 alone, nothing invented
    frankle.all_vs_all_but_bn({"trials": imagenet.assign(test_top5=np.nan)}, tmp_path / "old")
    assert [ax.get_ylabel() for ax in kept("all_vs_all_but_bn").axes if ax.get_ylabel()] == ["test accuracy (%)"]
