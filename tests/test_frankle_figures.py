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
    assert len(frankle.FIGURES) == 8


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
    for name in ("gamma_distribution", "gamma_sparsity", "clamp_accuracy", "dead_relu"):
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
