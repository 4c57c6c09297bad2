"""The `bn` table summarised batch by batch, never held whole.

Why: a store of 10,000 ResNet-218 trials has 81.8 million `bn` rows; read into pandas they are
gigabytes (issue 19 measured 4.3 GB and minutes for the figures), while every figure drawn from
them needs only a few numbers per trial: how many γ lie below each threshold, the sum of |γ| per
layer, a 40-bin histogram. So the figures stream the table (`Store.reduce`: the same files and
exactly-once rules as `Store.read`, a few columns, `trial_id` as dictionary codes) and fold each
Arrow batch into per-trial arrays here. The results are the same numbers pandas computes on the
whole table (tests/test_reduce.py): counts are exact, and the percentiles that place a histogram's
bins are exact order statistics, kept as the smallest and largest values of each group only.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sweeper.analysis.join import columns

BATCH_ROWS = 1 << 20


def fold(tables: Mapping[str, pd.DataFrame], name: str, cols: Iterable[str], fn, categorical=("trial_id",)):
    """`fn(batches)` over the rows of `tables[name]` (only `cols`): streamed from the store for a
    store's tables (`LazyTables.reduce`), else batches of the in-memory frame (a plain dict)."""
    cols = list(dict.fromkeys(cols))
    reduce = getattr(tables, "reduce", None)
    if reduce is not None:
        return reduce(name, cols, fn, categorical=list(categorical))
    frame = columns(tables, name, cols)
    return fn(iter(pa.Table.from_pandas(frame, preserve_index=False).to_batches(BATCH_ROWS)))


class Ids:
    """Dense codes for trial ids: the given ones (other trials' rows get -1), or every id seen."""

    def __init__(self, known: Iterable[str] | None = None):
        self.fixed = known is not None
        self.index = pd.Index(list(known) if known is not None else [], dtype=object)

    def __len__(self) -> int:
        return len(self.index)

    def codes(self, column: pa.Array) -> np.ndarray:
        if pa.types.is_dictionary(column.type):
            names = column.dictionary.to_numpy(zero_copy_only=False)
            rows = pc.fill_null(column.indices, -1).to_numpy(zero_copy_only=False)
        else:
            rows, names = pd.factorize(column.to_numpy(zero_copy_only=False))
        pos = self.index.get_indexer(names)
        if not self.fixed and (pos < 0).any():
            fresh = pd.unique(np.asarray(names, dtype=object)[pos < 0])
            self.index = self.index.append(pd.Index(fresh, dtype=object))
            pos = self.index.get_indexer(names)
        return np.append(pos, -1)[rows]  # a null id (row -1) picks the appended -1


def values(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """A numeric column as float64, nulls as NaN (as pandas reads them)."""
    return batch.column(name).to_numpy(zero_copy_only=False).astype(float, copy=False)


def _grow(a: np.ndarray | None, n: int, shape=()) -> np.ndarray:
    if a is None:
        return np.zeros((n, *shape))
    if len(a) >= n:
        return a
    return np.concatenate([a, np.zeros((n - len(a), *shape))])


def _count(codes: np.ndarray, n: int, where: np.ndarray | None = None) -> np.ndarray:
    return np.bincount(codes if where is None else codes[where], minlength=n)[:n]


# -- per trial: rows, moved, below thresholds --------------------------------------------------------
def trial_summary(tables, thresholds: Iterable[float]) -> pd.DataFrame:
    """Per trial of the `bn` table (index trial_id, sorted): rows `n`; `gamma_moved`/`beta_moved`,
    the rows whose value differs from its initialisation; `gamma_count`/`beta_count`, the rows
    not NaN; `below{i}`/`below_init{i}`, the rows with |γ| (|initial γ|) < thresholds[i]."""
    thresholds = [float(t) for t in thresholds]
    order = np.argsort(thresholds, kind="stable")
    edges = np.asarray(thresholds)[order]

    def run(batches: Iterator[pa.RecordBatch]) -> pd.DataFrame:
        ids, acc = Ids(), {}
        for batch in batches:
            codes = ids.codes(batch.column("trial_id"))
            ok = codes >= 0
            n = len(ids)
            names = set(batch.schema.names)
            acc["n"] = _grow(acc.get("n"), n)
            acc["n"][:n] += _count(codes, n, ok)
            for v in ("gamma", "beta"):
                if v not in names:
                    continue
                x = values(batch, v)
                acc[f"{v}_count"] = _grow(acc.get(f"{v}_count"), n)
                acc[f"{v}_count"][:n] += _count(codes, n, ok & ~np.isnan(x))
                if f"{v}_init" in names:
                    acc[f"{v}_moved"] = _grow(acc.get(f"{v}_moved"), n)
                    acc[f"{v}_moved"][:n] += _count(codes, n, ok & (x != values(batch, f"{v}_init")))
            for col, key in (("gamma", "below"), ("gamma_init", "below_init")):
                if col not in names:
                    continue
                # how many thresholds each |γ| reaches: |γ| < t_j for the j it does not reach (NaN: none)
                reached = np.searchsorted(edges, np.abs(values(batch, col)), side="right")
                per = np.bincount(codes[ok] * (len(edges) + 1) + reached[ok], minlength=n * (len(edges) + 1))
                below = np.cumsum(per.reshape(n, len(edges) + 1), axis=1)[:, :len(edges)]
                acc[key] = _grow(acc.get(key), n, (len(edges),))
                acc[key][:n] += below
        frame = pd.DataFrame(index=pd.Index(ids.index, name="trial_id"))
        for key, a in acc.items():
            if a.ndim == 1:
                frame[key] = a[:len(ids)].astype(np.int64)
            else:
                for j, i in enumerate(order):
                    frame[f"{key}{i}"] = a[:len(ids), j].astype(np.int64)
        return frame[frame["n"] > 0].sort_index() if "n" in frame else frame  # ids of a dictionary, no rows: out

    return cached(tables, f"summary:{thresholds}", lambda: fold(
        tables, "bn", ["trial_id", "gamma", "gamma_init", "beta", "beta_init"], run))


def cached(tables, key: str, compute):
    """One summary per tables object: the γ figures share the pass over `bn`."""
    cache = getattr(tables, "_cache", None)
    if cache is None:
        return compute()
    key = "reduce:" + key
    if key not in cache:
        cache[key] = compute()
    return cache[key]


# -- exact percentiles from the tails --------------------------------------------------------------
def _numpy_linear(low: np.ndarray, high: np.ndarray, n: int, q: float) -> float:
    """np.percentile(x, q) (method linear) of n values from the sorted smallest (`low`) and sorted
    largest (`high`) of them: the two order statistics it interpolates between, and its formula."""
    virtual = (n - 1) * (np.float64(q) / 100)
    prev = int(math.floor(virtual))
    nxt = min(prev + 1, n - 1)

    def at(i: int) -> np.float64:
        return np.float64(low[i] if i < len(low) else high[len(high) - n + i])

    a, b, t = at(prev), at(nxt), np.float64(virtual - prev)
    diff = b - a
    return float(b - diff * (1 - t) if t >= 0.5 else a + diff * t)


def percentiles(tables, column: str, groups: list[np.ndarray], counts: list[int], ids: pd.Index,
                qs=(0.5, 99.5)) -> list[tuple[float, ...] | None]:
    """np.nanpercentile(`column`, qs) of the rows of each group (a boolean mask over `ids`, with
    `counts` non-NaN values), in one pass keeping only each group's smallest and largest values
    (as many as the outer percentiles reach). None for a group without values."""
    assert min(qs) < 50 < max(qs)
    keep = [int(math.floor((c - 1) * max(min(qs), 100 - max(qs)) / 100)) + 3 for c in counts]  # +1 spare

    def run(batches):
        lows, highs = [[] for _ in groups], [[] for _ in groups]
        codes_of = Ids(ids)
        for batch in batches:
            codes = codes_of.codes(batch.column("trial_id"))
            x = values(batch, column)
            for g, member in enumerate(groups):
                if not counts[g]:
                    continue
                v = x[(codes >= 0) & np.append(member, False)[codes]]
                v = v[~np.isnan(v)]
                for side, sign in ((lows, 1), (highs, -1)):
                    part = np.concatenate([*side[g], sign * v])
                    if len(part) > keep[g]:
                        part = np.partition(part, keep[g] - 1)[:keep[g]]
                    side[g] = [part]
        out = []
        for g in range(len(groups)):
            if not counts[g]:
                out.append(None)
                continue
            low = np.sort(np.concatenate(lows[g]))
            high = np.sort(-np.concatenate(highs[g]))
            out.append(tuple(_numpy_linear(low, high, counts[g], q) for q in qs))
        return out

    return fold(tables, "bn", ["trial_id", column], run)


# -- histograms per trial -------------------------------------------------------------------------
def histograms(tables, cols: list[str], bins: list[np.ndarray], ids: pd.Index) -> list[dict[str, np.ndarray]]:
    """For each bin edges in `bins` (one per group), per trial of `ids`: np.histogram's counts of
    each column in `cols` (arrays trials x bins; the last bin closed, values outside dropped)."""

    def run(batches):
        out = [{c: np.zeros((len(ids), len(b) - 1), dtype=np.int64) for c in cols} for b in bins]
        codes_of = Ids(ids)
        for batch in batches:
            codes = codes_of.codes(batch.column("trial_id"))
            ok = codes >= 0
            for c in cols:
                x = values(batch, c)
                for g, edges in enumerate(bins):
                    k = len(edges) - 1
                    at = np.searchsorted(edges, x, side="right") - 1
                    at[x == edges[-1]] = k - 1  # np.histogram: the last bin holds its right edge
                    inside = ok & (at >= 0) & (at < k)
                    out[g][c] += np.bincount(codes[inside] * k + at[inside], minlength=len(ids) * k).reshape(-1, k)
        return out

    return fold(tables, "bn", ["trial_id", *cols], run)


def weighted_hist(ax, counts: np.ndarray, bins: np.ndarray, **kw) -> None:
    """ax.hist of values whose histogram over `bins` is `counts`: the same bars as ax.hist(values)."""
    ax.hist(bins[:-1], bins=bins, weights=counts, **kw)


# -- per trial and layer --------------------------------------------------------------------------
NAMED = ("layer", "stage", "block", "role")


def gamma_layers(tables) -> pd.DataFrame:
    """Per trial and BN layer (as sweeper.analysis.frankle.layers.gamma_layers on the whole table):
    the layer's name, stage, block and role from its first row, the mean |γ| over its channels
    (NaN skipped), the share with |γ| < 0.05, and its channel count."""

    def run(batches):
        ids, parts = Ids(), []
        for batch in batches:
            names = set(batch.schema.names)
            if not {"layer_index", "gamma"} <= names:
                return pd.DataFrame()
            codes = ids.codes(batch.column("trial_id"))
            layer = batch.column("layer_index").to_numpy(zero_copy_only=False).astype(np.int64)
            ok = codes >= 0
            key = codes[ok].astype(np.int64) << 32 | layer[ok]
            keys, first, inverse = np.unique(key, return_index=True, return_inverse=True)
            g = np.abs(values(batch, "gamma"))[ok]
            valid = ~np.isnan(g)
            part = {"key": keys, "sum": np.bincount(inverse[valid], weights=g[valid], minlength=len(keys)),
                    "count": np.bincount(inverse[valid], minlength=len(keys)),
                    "small": np.bincount(inverse[g < 0.05], minlength=len(keys)),
                    "channels": np.bincount(inverse, minlength=len(keys))}
            rows = np.flatnonzero(ok)[first]
            for c in NAMED:
                if c in names:
                    part[c] = batch.column(c).take(pa.array(rows)).to_pandas()
            parts.append(pd.DataFrame(part))
        if not parts:
            return pd.DataFrame()
        every = pd.concat(parts, ignore_index=True)
        named = {c: (c, "first") for c in NAMED if c in every}
        out = every.groupby("key", sort=True).agg(**named, s=("sum", "sum"), c=("count", "sum"),
                                                  small=("small", "sum"), channels=("channels", "sum"))
        keys = out.index.to_numpy()
        frame = pd.DataFrame({"trial_id": ids.index.to_numpy(dtype=object)[keys >> 32],
                              "layer_index": keys & 0xFFFFFFFF})
        for c in named:
            frame[c] = out[c].to_numpy()
        frame["mean_abs_gamma"] = np.where(out["c"] > 0, out["s"] / out["c"].where(out["c"] > 0, 1), np.nan)
        frame["small_share"] = out["small"].to_numpy() / out["channels"].to_numpy()
        frame["channels"] = out["channels"].to_numpy()
        for c in named:
            if isinstance(frame[c].dtype, pd.CategoricalDtype):
                frame[c] = frame[c].astype(object)
        return frame.sort_values(["trial_id", "layer_index"]).reset_index(drop=True)

    return fold(tables, "bn", ["trial_id", "layer_index", "gamma", *NAMED], run,
                categorical=("trial_id", "layer", "role"))
