"""The `bn` table summarised batch by batch, never held whole.

Why: a store of 10,000 ResNet-218 trials has 81.8 million `bn` rows; read into pandas they are
gigabytes (issue 19 measured 4.3 GB and minutes for the figures), while every figure drawn from
them needs only a few numbers per trial: how many γ lie below each threshold, the sum of |γ| per
layer, a 40-bin histogram. So the figures stream the table (`Store.reduce`: the same files and
exactly-once rules as `Store.read`, a few columns, `trial_id` as dictionary codes) and fold each
Arrow batch into per-trial arrays here. The results are the same numbers pandas computes on the
whole table (tests/test_reduce.py): counts are exact, and the percentiles that place a histogram's
bins are exact order statistics, kept as the smallest and largest values of each group only.

Each summary is a `Fold` (fed batch by batch), and `scan` runs several over one read of the table:
the γ figures read `bn` three times, not once per summary (six before): the per-trial `Summary` with
`Layers` (γ by layer), then the `Percentiles` of γ and β, then their `Histograms` over the bins those
place (sweeper.analysis.frankle.distributions). The first pass (sweeper.analysis.digest.first_pass)
is what `sweeper compact` stores per trial: on a compacted store only the trials not compacted are
streamed.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

from sweeper.analysis.join import columns
from sweeper.frames import Ids, split  # trial ids as dense codes, shared with Store.read

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


def _text(column: pa.Array) -> bool:
    t = column.type
    return pa.types.is_dictionary(t) or pa.types.is_string(t) or pa.types.is_large_string(t)


def values(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """A numeric column as float64, nulls as NaN (as pandas reads them)."""
    return batch.column(name).to_numpy(zero_copy_only=False).astype(float, copy=False)


class View:
    """One Arrow batch as the folds of a pass see it: each column converted once for all of them."""

    def __init__(self, batch: pa.RecordBatch):
        self.batch, self.names, self.num_rows = batch, set(batch.schema.names), batch.num_rows
        self._values: dict[str, np.ndarray] = {}
        self._split: dict[str, tuple[np.ndarray, list]] = {}

    def column(self, name: str) -> pa.Array:
        return self.batch.column(name)

    def split(self, name: str) -> tuple[np.ndarray, list]:
        """`split` of a column, once for all folds."""
        if name not in self._split:
            self._split[name] = split(self.batch.column(name))
        return self._split[name]

    def codes(self, ids: Ids, name: str = "trial_id") -> np.ndarray:
        rows, distinct = self.split(name)
        return ids.positions(distinct)[rows]

    def runs(self, ids: Ids, name: str = "trial_id") -> Runs:
        """The runs of equal ids in the batch, found on the row positions: no per-row codes."""
        rows, distinct = self.split(name)
        return Runs(rows, ids.positions(distinct))

    def values(self, name: str) -> np.ndarray:
        if name not in self._values:
            self._values[name] = values(self.batch, name)
        return self._values[name]


def count(flags: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The True rows of each run of a boolean array: summed as bytes into int32 (a batch has far
    fewer than 2**31 rows), three times sooner than np.add.reduceat's cast of every flag to int64."""
    return np.add.reduceat(flags.view(np.uint8), starts, dtype=np.int32)


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

    def __init__(self, rows: np.ndarray, positions: np.ndarray | None = None):
        """`rows`: a key per row (codes, or positions mapped to codes by `positions`)."""
        change = np.flatnonzero(rows[1:] != rows[:-1]) + 1
        self.starts = np.concatenate([[0], change]).astype(np.intp) if len(rows) else np.zeros(0, np.intp)
        self.codes = rows[self.starts] if positions is None else positions[rows[self.starts]]
        self.ok = self.codes >= 0

    def add(self, acc: np.ndarray, flags: np.ndarray | None, length: int) -> None:
        """acc[trial] += the rows (flags: the True rows) of each run of a batch of `length` rows."""
        if not len(self.starts):
            return
        sums = np.diff(np.append(self.starts, length)) if flags is None else count(flags, self.starts)
        np.add.at(acc, self.codes[self.ok], sums[self.ok])


# -- several summaries, one pass -------------------------------------------------------------------
class Fold:
    """A summary of a table built batch by batch: the `columns` it reads, `start()` before a pass
    (a pass may begin again: Store.reduce does when a compaction deletes files under it), `feed()`
    for each Arrow batch, `result()` after. `scan` runs several over one pass, so that the γ
    figures' summaries of 80 million `bn` rows cost three reads of the table instead of six."""

    columns: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ("trial_id",)

    def start(self) -> None:
        raise NotImplementedError

    def feed(self, batch: View) -> None:
        raise NotImplementedError

    def result(self):
        raise NotImplementedError


def scan(tables, name: str, folds: list[Fold]) -> list:
    """Every fold's result from one pass over `tables[name]`, which reads the union of their columns."""
    cols = [c for f in folds for c in f.columns]
    categorical = list(dict.fromkeys(c for f in folds for c in f.categorical))

    return fold(tables, name, cols, lambda batches: run(folds, batches), categorical)


def run(folds: list[Fold], batches: Iterator[pa.RecordBatch]) -> list:
    """Every fold's result over `batches` (each converted once for all of them)."""
    for f in folds:
        f.start()
    for batch in batches:
        view = View(batch)
        for f in folds:
            f.feed(view)
    return [f.result() for f in folds]


# -- per trial: rows, moved, below thresholds --------------------------------------------------------
class Summary(Fold):
    """Per trial of the `bn` table (index trial_id, sorted): rows `n`; `gamma_moved`/`beta_moved`,
    the rows whose value differs from its initialisation; `gamma_count`/`beta_count`, the rows
    not NaN; `below{i}`/`below_init{i}`, the rows with |γ| (|initial γ|) < thresholds[i]."""

    columns = ("trial_id", "gamma", "gamma_init", "beta", "beta_init")

    def __init__(self, thresholds: Iterable[float]):
        self.thresholds = [float(t) for t in thresholds]

    def start(self) -> None:
        self.ids, self.acc = Ids(), {}

    def _into(self, key: str, runs: Runs, flags, length: int) -> None:
        self.acc[key] = _grow(self.acc.get(key), len(self.ids))
        runs.add(self.acc[key], flags, length)

    def feed(self, batch: View) -> None:
        runs = batch.runs(self.ids)
        names, rows = batch.names, batch.num_rows
        self._into("n", runs, None, rows)
        for v in ("gamma", "beta"):
            if v not in names:
                continue
            x = batch.values(v)
            self._into(f"{v}_count", runs, ~np.isnan(x), rows)
            if f"{v}_init" in names:
                self._into(f"{v}_moved", runs, x != batch.values(f"{v}_init"), rows)
        for col, key in (("gamma", "below"), ("gamma_init", "below_init")):
            if col in names:
                a = np.abs(batch.values(col))
                for i, t in enumerate(self.thresholds):  # strictly below, as clamping uses; NaN is not
                    self._into(f"{key}{i}", runs, a < t, rows)

    def result(self) -> pd.DataFrame:
        ids = self.ids
        frame = pd.DataFrame(index=pd.Index(ids.index, name="trial_id"))
        for key, a in self.acc.items():
            frame[key] = _grow(a, len(ids))[:len(ids)].astype(np.int64)
        return frame[frame["n"] > 0].sort_index() if "n" in frame else frame  # ids of a dictionary, no rows: out


def cached(tables, key: str, compute):
    """One summary per tables object: the γ figures share the passes over `bn`."""
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


class Percentiles(Fold):
    """np.nanpercentile(`column`, qs) of the rows of each group (a boolean mask over `ids`, with
    `counts` non-NaN values), keeping only each group's smallest and largest values (as many as the
    outer percentiles reach). None for a group without values."""

    def __init__(self, column: str, groups: list[np.ndarray], counts: list[int], ids: pd.Index, qs=(0.5, 99.5)):
        assert min(qs) < 50 < max(qs)
        self.column, self.columns = column, ("trial_id", column)
        self.groups, self.counts, self.ids, self.qs = groups, counts, ids, qs
        self.keep = [int(math.floor((c - 1) * max(min(qs), 100 - max(qs)) / 100)) + 3 for c in counts]  # +1 spare

    def start(self) -> None:
        self.lows, self.highs = [[] for _ in self.groups], [[] for _ in self.groups]
        self.bound = [[np.inf, np.inf] for _ in self.groups]  # a kept tail's K-th value: anything past it can go
        self.codes_of = Ids(self.ids)

    def feed(self, batch: View) -> None:
        if self.column not in batch.names:
            return
        rows, distinct = batch.split("trial_id")
        positions = self.codes_of.positions(distinct)
        x = batch.values(self.column)
        for g, member in enumerate(self.groups):
            if not self.counts[g]:
                continue
            inside = np.append(member, False)[positions]  # membership of the batch's distinct ids
            v = x if inside[:-1].all() and rows.min(initial=0) >= 0 else x[inside[rows]]
            for side, sign in ((self.lows, 0), (self.highs, 1)):
                # NaN fails both tests: nanpercentile leaves it out; the high tail is kept negated
                w = v[v < self.bound[g][0]] if not sign else -v[v > -self.bound[g][1]]
                side[g].append(w)
                if sum(len(a) for a in side[g]) > 2 * self.keep[g]:
                    part = np.partition(np.concatenate(side[g]), self.keep[g] - 1)[:self.keep[g]]
                    side[g] = [part]
                    self.bound[g][sign] = part.max()

    def result(self) -> list[tuple[float, ...] | None]:
        out = []
        for g in range(len(self.groups)):
            if not self.counts[g] or not self.lows[g]:
                out.append(None)
                continue
            low = np.sort(np.concatenate(self.lows[g]))[:self.keep[g]]  # past the K-th, values were dropped
            high = np.sort(-np.concatenate(self.highs[g]))[-self.keep[g]:]
            out.append(tuple(_numpy_linear(low, high, self.counts[g], q) for q in self.qs))
        return out


def percentiles(tables, column: str, groups: list[np.ndarray], counts: list[int], ids: pd.Index,
                qs=(0.5, 99.5)) -> list[tuple[float, ...] | None]:
    """`Percentiles` (see there) in a pass of its own."""
    return scan(tables, "bn", [Percentiles(column, groups, counts, ids, qs)])[0]


# -- histograms per trial -------------------------------------------------------------------------
class Histograms(Fold):
    """For each bin edges in `bins` (one per group), per trial of `ids`: np.histogram's counts of
    each column in `cols` (arrays trials x bins; the last bin closed, values outside dropped)."""

    def __init__(self, cols: list[str], bins: list[np.ndarray], ids: pd.Index):
        self.cols, self.bins, self.ids = list(cols), bins, ids
        self.columns = ("trial_id", *cols)

    def start(self) -> None:
        self.out = [{c: np.zeros((len(self.ids), len(b) - 1), dtype=np.int64) for c in self.cols} for b in self.bins]
        self.codes_of = Ids(self.ids)

    def feed(self, batch: View) -> None:
        codes = batch.codes(self.codes_of)
        ok = codes >= 0
        if not ok.any():
            return
        rows = None if ok.all() else np.flatnonzero(ok)  # only the rows of the trials asked for
        codes = codes if rows is None else codes[rows]
        # a batch holds a few trials, whose codes lie close (files and parts are in trial order):
        # count into their range of rows only, not a zeroed trials x bins array a batch
        lo, hi = int(codes.min()), int(codes.max()) + 1
        for c in self.cols:
            if c not in batch.names:
                continue
            x = batch.values(c) if rows is None else batch.values(c)[rows]
            for g, edges in enumerate(self.bins):
                k = len(edges) - 1
                inside = (x >= edges[0]) & (x <= edges[-1])
                at = bin_of(x[inside], edges)
                counts = np.bincount((codes[inside] - lo) * k + at, minlength=(hi - lo) * k)
                self.out[g][c][lo:hi] += counts.reshape(-1, k)

    def result(self) -> list[dict[str, np.ndarray]]:
        return self.out


def histograms(tables, cols: list[str], bins: list[np.ndarray], ids: pd.Index) -> list[dict[str, np.ndarray]]:
    """`Histograms` (see there) in a pass of its own."""
    return scan(tables, "bn", [Histograms(cols, bins, ids)])[0]


def bin_of(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin of each value inside equal-width `edges`, as np.histogram finds it: arithmetic,
    then corrected against the edges themselves (the last bin holds its right edge)."""
    k = len(edges) - 1
    if edges[-1] == edges[0]:
        return np.zeros(len(x), np.intp)
    at = ((x - edges[0]) * (k / (edges[-1] - edges[0]))).astype(np.intp)
    np.minimum(at, k - 1, out=at)  # whole-array steps, not masked assignments: half the time
    at -= x < edges[at]
    up = x >= edges[at + 1]
    up &= at != k - 1
    at += up
    return at


def weighted_hist(ax, counts: np.ndarray, bins: np.ndarray, **kw) -> None:
    """ax.hist of values whose histogram over `bins` is `counts`: the same bars as ax.hist(values)."""
    ax.hist(bins[:-1], bins=bins, weights=counts, **kw)


# -- per trial and layer --------------------------------------------------------------------------
NAMED = ("layer", "stage", "block", "role")


class Layers(Fold):
    """Per trial and BN layer (as sweeper.analysis.frankle.layers.gamma_layers on the whole table):
    the layer's name, stage, block and role from its first row, the mean |γ| over its channels
    (NaN skipped), the share with |γ| < 0.05, and its channel count."""

    columns = ("trial_id", "layer_index", "gamma", *NAMED)
    categorical = ("trial_id", "layer", "role")

    def start(self) -> None:
        self.ids, self.parts, self.vocab, self.absent = Ids(), [], {}, False

    def feed(self, batch: View) -> None:
        names = batch.names
        if self.absent or not {"layer_index", "gamma"} <= names:
            self.absent = True
            return
        if not batch.num_rows:
            return
        rows, distinct = batch.split("trial_id")
        layer = batch.column("layer_index").to_numpy(zero_copy_only=False).astype(np.int64)
        runs = Runs(rows.astype(np.int64) << 32 | layer)  # a layer's channels lie together, as a trial's rows do
        codes = self.ids.positions(distinct)[rows[runs.starts]]
        g = np.abs(batch.values("gamma"))
        valid = ~np.isnan(g)
        ends = np.append(runs.starts, len(rows))
        keep = codes >= 0
        part = {"key": codes << 32 | layer[runs.starts], "sum": np.add.reduceat(np.where(valid, g, 0.0), runs.starts),
                "count": count(valid, runs.starts), "small": count(g < 0.05, runs.starts), "channels": np.diff(ends)}
        for c in NAMED:
            if c in names:  # text as codes into one vocabulary per column: no string per run
                column = batch.column(c).take(pa.array(runs.starts))
                part[c] = self.vocab.setdefault(c, Ids()).codes(column) if _text(column) else \
                    column.to_numpy(zero_copy_only=False)
        self.parts.append({c: a[keep] for c, a in part.items()} if not keep.all() else part)

    def result(self) -> pd.DataFrame:
        if self.absent or not self.parts:
            return pd.DataFrame()
        every = {c: np.concatenate([part[c] for part in self.parts]) for c in self.parts[0]}
        keys = every.pop("key")
        if len(keys) and not (keys[1:] >= keys[:-1]).all():  # a file not in trial order: rows of a
            order = np.argsort(keys, kind="stable")          # (trial, layer) brought together, first stays first
            keys, every = keys[order], {c: a[order] for c, a in every.items()}
        # a (trial, layer) is one run, or several where batches end inside it: merged here
        starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]])) if len(keys) else np.zeros(0, int)
        keys = keys[starts]
        s, c = np.add.reduceat(every["sum"], starts), np.add.reduceat(every["count"].astype(np.int64), starts)
        small = np.add.reduceat(every["small"].astype(np.int64), starts)
        channels = np.add.reduceat(every["channels"].astype(np.int64), starts)
        names = np.asarray(self.ids.names, dtype=object)
        frame = {"trial_id": pd.Categorical.from_codes(keys >> 32, pd.Index(names).astype(str)),
                 "layer_index": keys & 0xFFFFFFFF}
        for col in NAMED:
            if col in every:
                v = every[col][starts]
                words = self.vocab.get(col)  # text kept as codes into one vocabulary (-1: a null)
                frame[col] = pd.Categorical.from_codes(v, pd.Index(words.names).astype(str)) if words else v
        frame["mean_abs_gamma"] = np.where(c > 0, s / np.where(c > 0, c, 1), np.nan)
        frame["small_share"] = small / channels
        frame["channels"] = channels
        # by trial id, then layer: the trials' order by name applied to their codes (no sort of 2M
        # strings), and nothing moved when the stream came in that order (a compacted part's)
        rank = np.empty(len(names), np.int64)
        rank[np.argsort(names, kind="stable")] = np.arange(len(names))
        place = rank[keys >> 32] << 32 | (keys & 0xFFFFFFFF)
        if len(place) and not (place[1:] >= place[:-1]).all():
            order = np.argsort(place, kind="stable")
            frame = {c: (v.take(order) if isinstance(v, pd.Categorical) else v[order]) for c, v in frame.items()}
        return pd.DataFrame(frame)
