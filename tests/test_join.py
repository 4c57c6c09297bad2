"""Joining per-trial tables to `trials` by integer codes (sweeper.analysis.join) gives exactly
what `DataFrame.merge` gives, and the store's figure tables read only what a figure asks for."""
import numpy as np
import pandas as pd
import pytest

from sweeper.analysis.draw import LazyTables
from sweeper.analysis.join import among, per_trial_means, with_trials
from sweeper.store import Store
from sweeper.experiments.train.spec import TrainSpec


def per_trial_table(rng, ids, n=500):
    return pd.DataFrame({"trial_id": rng.choice(ids, n), "gamma": rng.normal(size=n), "layer": rng.choice(["a", "b"], n)})


@pytest.mark.parametrize("categorical", [False, True])
def test_with_trials_equals_an_inner_merge(categorical):
    rng = np.random.default_rng(0)
    ids = [f"t{i:03d}" for i in range(40)]
    trials = pd.DataFrame({"trial_id": ids[:30], "model": rng.choice(["resnet-20", "resnet-14", None], 30),
                           "depth": rng.integers(8, 100, 30), "test_acc": rng.random(30)})
    table = per_trial_table(rng, ids)  # ids t030..t039 are in no trial: dropped, as an inner join drops them
    expected = table.merge(trials[["trial_id", "model", "depth"]], on="trial_id", how="inner")
    if categorical:
        table = table.assign(trial_id=table["trial_id"].astype("category"))
    got = with_trials(table, trials, ["model", "depth", "layer"])  # `layer` is the table's own: kept as is
    assert list(got.columns) == list(expected.columns)
    assert isinstance(got["model"].dtype, pd.CategoricalDtype)  # codes, not one string per row
    assert got["trial_id"].astype(str).tolist() == expected["trial_id"].tolist()
    assert got["model"].astype(object).where(got["model"].notna(), None).tolist() == \
        expected["model"].astype(object).where(expected["model"].notna(), None).tolist()
    assert got["depth"].tolist() == expected["depth"].tolist() and got["gamma"].tolist() == expected["gamma"].tolist()
    # sorting by a brought-over text column still sorts by its text
    assert got.sort_values("model", kind="stable")["model"].dropna().astype(str).is_monotonic_increasing


def test_with_trials_falls_back_to_merge_when_ids_repeat():
    trials = pd.DataFrame({"trial_id": ["a", "a", "b"], "seed": [0, 1, 2]})
    table = pd.DataFrame({"trial_id": ["a", "b"], "gamma": [1.0, 2.0]})
    assert with_trials(table, trials, ["seed"])["seed"].tolist() == [0, 1, 2]


def test_per_trial_means_counts_and_averages_each_trial():
    ids = pd.Series(["b", "a", "b", "b", "a"])
    got = per_trial_means(ids, {"small": np.array([1, 0, 0, 1, 1]), "share": np.array([True, False, False, True, True])})
    assert got.index.tolist() == ["a", "b"] and got["n"].tolist() == [2, 3]
    assert got["small"].tolist() == pytest.approx([0.5, 2 / 3]) == got["share"].tolist()


def test_figure_tables_read_only_the_columns_asked_for(tmp_path):
    store = Store(tmp_path)
    for seed in range(3):
        s = TrainSpec.from_values({"dataset": "digits", "model": "resnet-8-4", "epochs": 1, "seed": seed})
        row = {"trial_id": s.trial_id, "study": "st", "experiment": "train", "status": "done", "error": "", **s.to_row()}
        bn = pd.DataFrame({"layer": ["bn1", "bn2"], "gamma": [0.5, 1.5], "gamma_init": 1.0})
        store.commit_trial("st", s, row, {"bn": bn})
    tables = LazyTables(store, "st")
    assert "bn" in tables and "clamp" not in tables and tables._cache == {}  # asking reads nothing
    part = tables.columns("bn", ["trial_id", "gamma", "no_such_column"])
    assert list(part.columns) == ["trial_id", "gamma"] and len(part) == 6
    assert isinstance(part["trial_id"].dtype, pd.CategoricalDtype)
    assert "bn" not in tables._cache  # the whole table was never read
    full = store.read("st", "bn")
    assert sorted(part["trial_id"].astype(str)) == sorted(full["trial_id"]) and not isinstance(
        full["trial_id"].dtype, pd.CategoricalDtype)  # plain reads, as users' notebooks see them, are unchanged


@pytest.mark.parametrize("column, values", [
    (pd.Series(["b", "a", None, "c"]), pd.Index(["a", "c"])),
    (pd.Index(["x", "y", "z"]), pd.Series(["y"]).astype("category")),
    (pd.Series(["a", "b", "a"]).astype("category"), {"a"}),
    (pd.Series(["a", None]), ["a", None]),  # a missing value matches a missing value, as in pandas
    (pd.Series(["a", "b"]), []),
    (pd.Series([], dtype=str), ["a"]),
    (pd.Series([f"{i:016x}" for i in range(5000)]), [f"{i:016x}" for i in range(0, 10000, 3)]),
])
def test_among_is_pandas_isin(column, values):
    want = np.asarray(pd.Series(column).isin(list(values) if isinstance(values, set) else values))
    got = among(column, values)
    assert got.dtype == bool and np.array_equal(got, want)
