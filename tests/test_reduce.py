"""The `bn` table summarised batch by batch (sweeper.analysis.reduce, issue 19) gives the numbers a
pandas computation on the whole table gives: on a store of per-trial files, after compaction, and
with a trial rerun after compaction (its own file beside the compacted part: read once, the new rows)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sweeper.analysis import digest, reduce
from sweeper.analysis.cohort import Restricted
from sweeper.analysis.draw import LazyTables
from sweeper.analysis.frankle import gamma, layers
from sweeper.analysis.frankle.common import SPARSITY_THRESHOLDS
from sweeper.bench.figures import generate_store, rerun_trial
from sweeper.compact import compact_study
from sweeper.store import Store

STUDY = "bench-figures"
MODEL = "resnet-8"
TRIALS = 10
ROWS = 336  # resnet-8's BN channels: `bn` rows a trial


def rerun_one(store: Store) -> str:
    """Commit one trial again with other γ (some NaN): its own file then overrides its rows in
    the compacted part."""
    tid = sorted(store.read(STUDY, "trials")["trial_id"])[0]
    new_gamma = np.linspace(-0.3, 2.0, ROWS)
    new_gamma[::7] = np.nan
    rerun_trial(store, tid, new_gamma)
    return tid


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The same generated study three ways: per-trial files; compacted; compacted, then one trial rerun."""
    out = {}
    for state in ("files", "compacted", "rerun"):
        root = tmp_path_factory.mktemp(state)
        generate_store(root, trials=TRIALS, model=MODEL, seed=0, workers=1)
        store = Store(root)
        if state != "files":
            compact_study(store, STUDY)
        if state == "rerun":
            rerun_one(store)
        out[state] = store
    return out


def streamed(store: Store, batch_rows: int = 1000) -> LazyTables:
    tables = LazyTables(store, STUDY)
    tables.batch_rows = batch_rows  # batches smaller than a trial: summaries merge across batches
    return tables


@pytest.mark.parametrize("state", ["files", "compacted", "rerun"])
def test_streamed_summaries_equal_pandas_on_the_whole_table(stores, state):
    store = stores[state]
    bn = store.read(STUDY, "bn")
    assert bn["trial_id"].nunique() == TRIALS
    tables = streamed(store)
    summary = digest.trial_summary(tables, SPARSITY_THRESHOLDS)
    by = bn.groupby("trial_id")
    pd.testing.assert_series_equal(summary["n"], by.size().astype(np.int64), check_names=False)
    for v in ("gamma", "beta"):
        moved = (bn[v] != bn[f"{v}_init"]).groupby(bn["trial_id"]).sum()
        pd.testing.assert_series_equal(summary[f"{v}_moved"], moved.astype(np.int64), check_names=False)
        pd.testing.assert_series_equal(summary[f"{v}_count"], by[v].count().astype(np.int64), check_names=False)
    # Fig. 5's numbers: the streamed counts against gamma_sparsity on the rows in memory
    expected = gamma.gamma_sparsity(bn).sort_values(["trial_id", "threshold"]).reset_index(drop=True)
    got = gamma.summary_sparsity(summary).sort_values(["trial_id", "threshold"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected.astype(got.dtypes.to_dict()))
    # γ by layer: the streamed sums against the groupby on the whole table
    want = layers.gamma_layers(bn).sort_values(["trial_id", "layer_index"]).reset_index(drop=True)
    have = digest.gamma_layers(tables)
    assert list(have["trial_id"]) == list(want["trial_id"]) and list(have["layer_index"]) == list(want["layer_index"])
    for c in ("mean_abs_gamma", "small_share", "channels"):
        np.testing.assert_allclose(have[c].to_numpy(float), want[c].to_numpy(float), rtol=1e-12, err_msg=c)
    for c in ("layer", "stage", "block", "role"):
        assert list(have[c].astype(str)) == list(want[c].astype(str)), c
    if state == "rerun":  # the rerun's new γ, not the compacted part's, and NaN skipped in the mean
        tid = sorted(bn["trial_id"].unique())[0]
        assert summary.loc[tid, "gamma_count"] < summary.loc[tid, "n"]


@pytest.mark.parametrize("state", ["files", "rerun"])
def test_streamed_percentiles_and_histograms_equal_numpy(stores, state):
    store = stores[state]
    bn = store.read(STUDY, "bn")
    tables = streamed(store, batch_rows=777)
    summary = digest.trial_summary(tables, SPARSITY_THRESHOLDS)
    ids = pd.Index(summary.index)
    groups = [np.ones(len(ids), bool), ids.isin(ids[::3]), np.zeros(len(ids), bool)]
    counts = [int(summary.loc[g, "gamma_count"].sum()) for g in groups]
    got = reduce.percentiles(tables, "gamma", groups, counts, ids)
    for g, p in zip(groups[:2], got[:2]):
        values = bn.loc[bn["trial_id"].isin(ids[g]), "gamma"]
        np.testing.assert_allclose(p, np.nanpercentile(values, [0.5, 99.5]), rtol=1e-15, atol=0)
    assert got[2] is None
    bins = [np.linspace(min(p[0], 0.0), max(p[1], 1.0), 41) for p in got[:2]]
    hists = reduce.histograms(tables, ["gamma", "gamma_init"], bins, ids)
    for edges, h in zip(bins, hists):
        for tid in ids:
            rows = bn[bn["trial_id"] == tid]
            for c in ("gamma", "gamma_init"):
                expected, _ = np.histogram(rows[c].dropna(), bins=edges)
                assert np.array_equal(h[c][ids.get_loc(tid)], expected), (tid, c)


def test_a_cohort_streams_only_its_trials(stores):
    store = stores["rerun"]
    bn = store.read(STUDY, "bn")
    keep = frozenset(sorted(bn["trial_id"].unique())[:4])
    summary = digest.trial_summary(Restricted(streamed(store), keep), SPARSITY_THRESHOLDS)
    assert set(summary.index) == keep
    assert summary["n"].sum() == bn["trial_id"].isin(keep).sum()
    plain = digest.trial_summary({"bn": bn}, SPARSITY_THRESHOLDS)  # a dict of frames: the same numbers
    pd.testing.assert_frame_equal(plain.loc[sorted(keep)], summary.loc[sorted(keep)])


def test_gamma_layers_of_rows_out_of_trial_order_equal_pandas():
    """A file whose rows are not in trial order (a trial's layers apart, batches mixing trials)
    still gives each (trial, layer) once, with the pandas numbers: the merge of adjacent runs
    falls back to sorting when the stream is not in order."""
    rng = np.random.default_rng(3)
    parts = []
    for tid in ("b", "a", "c"):
        for layer in range(4):
            n = int(rng.integers(1, 6))
            g = rng.normal(0, 0.1, n)
            g[rng.random(n) < 0.2] = np.nan
            parts.append(pd.DataFrame({"trial_id": tid, "layer_index": layer, "layer": f"l{layer}", "stage": layer // 2,
                                       "block": layer % 2, "role": "main", "gamma": g}))
    order = [0, 5, 1, 9, 2, 6, 3, 10, 4, 7, 8, 11]  # trials interleaved, and "a" before "b" ends
    bn = pd.concat([parts[i] for i in order], ignore_index=True)
    have = digest.gamma_layers({"bn": bn})
    want = layers.gamma_layers(bn).sort_values(["trial_id", "layer_index"]).reset_index(drop=True)
    assert list(have["trial_id"]) == list(want["trial_id"]) and list(have["layer_index"]) == list(want["layer_index"])
    for c in ("mean_abs_gamma", "small_share", "channels"):
        np.testing.assert_allclose(have[c].to_numpy(float), want[c].to_numpy(float), rtol=1e-12, err_msg=c)
    assert list(have["layer"].astype(str)) == list(want["layer"].astype(str))


def test_bin_of_is_np_histogram_at_the_edges():
    edges = np.linspace(-0.3, 1.7, 41)
    x = np.concatenate([edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf),
                        np.random.default_rng(0).uniform(-0.3, 1.7, 10_000)])
    x = x[(x >= edges[0]) & (x <= edges[-1])]
    expected, _ = np.histogram(x, bins=edges)
    assert np.array_equal(np.bincount(reduce.bin_of(x, edges), minlength=40), expected)


class CountingTables(LazyTables):
    """A store's tables that count the passes made over each table."""

    def __init__(self, store, study):
        super().__init__(store, study)
        self.passes = {}

    def reduce(self, name, cols, fn, categorical=("trial_id",), trials=None):
        self.passes[name] = self.passes.get(name, 0) + 1
        return super().reduce(name, cols, fn, categorical, trials)

    def digested(self, name, digest_name, digest, fn, trials=None):
        """A pass that takes what digests hold from them: counted apart, with the rows it streams."""
        key = f"{name} digest"
        self.passes[key] = self.passes.get(key, 0) + 1

        def counting(batches):
            for batch in batches:
                self.passes[f"{key} rows streamed"] = self.passes.get(f"{key} rows streamed", 0) + batch.num_rows
                yield batch

        return super().digested(name, digest_name, digest, lambda batches: fn(counting(batches)), trials)


@pytest.mark.parametrize("state", ["files", "compacted"])
def test_every_bn_figure_together_reads_bn_three_times(stores, tmp_path, state):
    """Figs. 4 and 5, β and γ by layer share their passes over `bn` (issue 19: six before); on a
    compacted store the first comes from the digest compaction stored (sweeper.analysis.digest),
    which streams only what it lacks (here nothing)."""
    from sweeper.analysis.frankle import FIGURES

    tables = CountingTables(stores[state], STUDY)
    for name in ("gamma_distribution", "beta_distribution", "gamma_sparsity", "gamma_sparsity_vs_bn_params",
                 "gamma_by_layer"):
        assert FIGURES[name](tables, tmp_path), name
    streamed = {} if state == "compacted" else {"bn digest rows streamed": TRIALS * ROWS}
    assert tables.passes == {"bn digest": 1, "bn": 2, **streamed}
