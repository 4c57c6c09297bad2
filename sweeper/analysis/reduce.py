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


def _text(column: pa.Array) -> bool:
    t = column.type
    return pa.types.is_dictionary(t) or pa.types.is_string(t) or pa.types.is_large_string(t)


def values(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """A numeric column as float64, nulls as NaN (as pandas reads them)."""
    return batch.column(name).to_numpy(zero_copy_only=False).astype(float, copy=False)


def _grow(a: np.ndarray | None, n: int) -> np.ndarray:
    if a is None:
        return np.zeros(n, np.int64)
    if len(a) >= n:
        return a
    return np.concatenate([a, np.zeros(n - len(a), np.int64)])


class Runs:
    """The runs of equal trial codes in a batch. A trial's rows lie together in every file (its own
    file, or a compacted part sorted by trial), so a batch holds a few runs, and a per-trial sum is
    a sequential np.add.reduceat over them: several times cheaper than a bincount per row."""

    def __init__(self, codes: np.ndarray):
        change = np.flatnonzero(codes[1:] != codes[:-1]) + 1
        self.starts = np.concatenate([[0], change]).astype(np.intp) if len(codes) else np.zeros(0, np.intp)
        self.codes = codes[self.starts]
        self.ok = self.codes >= 0

    def add(self, acc: np.ndarray, flags: np.ndarray | None, length: int) -> None:
        """acc[trial] += the rows (flags: the True rows) of each run of a batch of `length` rows."""
        if not len(self.starts):
            return
        sums = np.diff(np.append(self.starts, length)) if flags is None else \
            np.add.reduceat(flags, self.starts, dtype=np.int64)
        np.add.at(acc, self.codes[self.ok], sums[self.ok])


# -- per trial: rows, moved, below thresholds --------------------------------------------------------
def trial_summary(tables, thresholds: Iterable[float]) -> pd.DataFrame:
    """Per trial of the `bn` table (index trial_id, sorted): rows `n`; `gamma_moved`/`beta_moved`,
    the rows whose value differs from its initialisation; `gamma_count`/`beta_count`, the rows
    not NaN; `below{i}`/`below_init{i}`, the rows with |γ| (|initial γ|) < thresholds[i]."""
    thresholds = [float(t) for t in thresholds]

    def run(batches: Iterator[pa.RecordBatch]) -> pd.DataFrame:
        ids, acc = Ids(), {}

        def into(key: str, runs: Runs, flags, length: int) -> None:
            acc[key] = _grow(acc.get(key), len(ids))
            runs.add(acc[key], flags, length)

        for batch in batches:
            runs = Runs(ids.codes(batch.column("trial_id")))
            names, rows = set(batch.schema.names), batch.num_rows
            into("n", runs, None, rows)
            for v in ("gamma", "beta"):
                if v not in names:
                    continue
                x = values(batch, v)
                into(f"{v}_count", runs, ~np.isnan(x), rows)
                if f"{v}_init" in names:
                    into(f"{v}_moved", runs, x != values(batch, f"{v}_init"), rows)
            for col, key in (("gamma", "below"), ("gamma_init", "below_init")):
                if col in names:
                    a = np.abs(values(batch, col))
                    for i, t in enumerate(thresholds):  # strictly below, as clamping uses; NaN is not
                        into(f"{key}{i}", runs, a < t, rows)
        frame = pd.DataFrame(index=pd.Index(ids.index, name="trial_id"))
        for key, a in acc.items():
            frame[key] = _grow(a, len(ids))[:len(ids)].astype(np.int64)
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
        bound = [[np.inf, np.inf] for _ in groups]  # a kept tail's K-th value: anything past it can go
        codes_of = Ids(ids)
        for batch in batches:
            codes = codes_of.codes(batch.column("trial_id"))
            x = values(batch, column)
            for g, member in enumerate(groups):
                if not counts[g]:
                    continue
                v = x[np.append(member, False)[codes]]
                for side, sign in ((lows, 0), (highs, 1)):
                    w = -v if sign else v
                    w = w[w < bound[g][sign]]  # NaN fails too: nanpercentile leaves it out
                    side[g].append(w)
                    if sum(len(a) for a in side[g]) > 2 * keep[g]:
                        part = np.partition(np.concatenate(side[g]), keep[g] - 1)[:keep[g]]
                        side[g] = [part]
                        bound[g][sign] = part.max()
        out = []
        for g in range(len(groups)):
            if not counts[g]:
                out.append(None)
                continue
            low = np.sort(np.concatenate(lows[g]))[:keep[g]]  # past the K-th, values were dropped
            high = np.sort(-np.concatenate(highs[g]))[-keep[g]:]
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
                    inside = ok & (x >= edges[0]) & (x <= edges[-1])
                    at = bin_of(x[inside], edges)
                    out[g][c] += np.bincount(codes[inside] * k + at, minlength=len(ids) * k).reshape(-1, k)
        return out

    return fold(tables, "bn", ["trial_id", *cols], run)


def bin_of(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin of each value inside equal-width `edges`, as np.histogram finds it: arithmetic,
    then corrected against the edges themselves (the last bin holds its right edge)."""
    k = len(edges) - 1
    if edges[-1] == edges[0]:
        return np.zeros(len(x), np.intp)
    at = ((x - edges[0]) * (k / (edges[-1] - edges[0]))).astype(np.intp)
    at[at == k] -= 1
    at[x < edges[at]] -= 1
    at[(x >= edges[at + 1]) & (at != k - 1)] += 1
    return at


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
        ids, parts, vocab = Ids(), [], {}
        for batch in batches:
            names = set(batch.schema.names)
            if not {"layer_index", "gamma"} <= names:
                return pd.DataFrame()
            if not batch.num_rows:
                continue
            codes = ids.codes(batch.column("trial_id")).astype(np.int64)
            key = codes << 32 | batch.column("layer_index").to_numpy(zero_copy_only=False).astype(np.int64)
            runs = Runs(key)  # a layer's channels lie together, as a trial's rows do
            g = np.abs(values(batch, "gamma"))
            valid = ~np.isnan(g)
            ends = np.append(runs.starts, len(key))
            keep = codes[runs.starts] >= 0
            part = {"key": runs.codes, "sum": np.add.reduceat(np.where(valid, g, 0.0), runs.starts),
                    "count": np.add.reduceat(valid, runs.starts, dtype=np.int64),
                    "small": np.add.reduceat(g < 0.05, runs.starts, dtype=np.int64), "channels": np.diff(ends)}
            for c in NAMED:
                if c in names:  # text as codes into one vocabulary per column: no string per run
                    column = batch.column(c).take(pa.array(runs.starts))
                    part[c] = vocab.setdefault(c, Ids()).codes(column) if _text(column) else \
                        column.to_numpy(zero_copy_only=False)
            parts.append(pd.DataFrame(part)[keep])
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
        for c, words in vocab.items():  # codes back to text, as categoricals (-1: a null)
            if c in frame:
                frame[c] = pd.Categorical.from_codes(frame[c].to_numpy(), pd.Index(words.index).astype(str))
        return frame.sort_values(["trial_id", "layer_index"]).reset_index(drop=True)

    return fold(tables, "bn", ["trial_id", "layer_index", "gamma", *NAMED], run,
                categorical=("trial_id", "layer", "role"))
