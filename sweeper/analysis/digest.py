"""The γ figures' first pass over `bn` (per-trial counts below the sparsity thresholds, and γ by
layer: sweeper.analysis.reduce's `Summary` and `Layers`), stored by `sweeper compact` as a digest
(sweeper.digests) for the trials it merges.

Why: it is the widest of the three passes the γ figures make (ten columns of 82 million rows at
10,000 trials, half of their drawing time), and what it computes per trial never changes once the
trial is compacted. Drawing then reads 10,000 summary rows and one row per trial and layer from
the digest, and streams only the trials not compacted since. The same numbers either way
(tests/test_digests.py), but for float rounding: a layer's mean |γ| is a sum of its channels, which a
stream adds in two pieces where a read batch ends inside the layer (at 10,000 trials, 86 of 2.19
million layer means differed from the streamed ones in the 16th digit; every count is exact).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from sweeper.analysis import reduce
from sweeper.digests import DIGESTS, Digest

#: |γ| thresholds of Frankle et al.'s Figs. 5 and 6 (share of γ near zero, clamping): the counts the
#: digest stores (sweeper.analysis.frankle draws them)
SPARSITY_THRESHOLDS = (0.01, 0.05, 0.1, 0.2)
NAME = "first-pass"
# bump when Summary or Layers change what they compute: stored digests of another version are not used
VERSION = 1
THRESHOLDS = [float(t) for t in SPARSITY_THRESHOLDS]


def _folds(thresholds: list[float] = THRESHOLDS) -> list[reduce.Fold]:
    """The first pass: per-trial counts below `thresholds`, and γ by layer."""
    return [reduce.Summary(thresholds), reduce.Layers()]


def _compute(batches: Iterator[pa.RecordBatch]) -> dict[str, pa.Table]:
    summary, layers = reduce.run(_folds(), batches)
    return {"summary": pa.Table.from_pandas(summary.reset_index(), preserve_index=False),
            "layers": pa.Table.from_pandas(layers, preserve_index=False)}


FIRST_PASS = Digest(
    table="bn", key=f"{VERSION}:{THRESHOLDS}",
    columns=tuple(dict.fromkeys(c for f in _folds() for c in f.columns)),
    categorical=tuple(dict.fromkeys(c for f in _folds() for c in f.categorical)),
    compute=_compute)
DIGESTS.add(NAME, FIRST_PASS)


def first_pass(tables, thresholds: Iterable[float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-trial `Summary` at `thresholds` and γ by layer (`Layers`) of the `bn` table, from one
    pass over it, or from the stored digests and a pass over the trials they lack; cached per
    tables object: every γ figure starts from these."""
    thresholds = [float(t) for t in thresholds]
    return reduce.cached(tables, f"first:{thresholds}",
                         lambda: _stored(tables, thresholds) or tuple(reduce.scan(tables, "bn", _folds(thresholds))))


def trial_summary(tables, thresholds: Iterable[float]) -> pd.DataFrame:
    """`reduce.Summary` of the `bn` table (see there), from the pass that also gives `gamma_layers`."""
    return first_pass(tables, thresholds)[0]


def gamma_layers(tables, thresholds: Iterable[float] = ()) -> pd.DataFrame:
    """`reduce.Layers` of the `bn` table (see there), from the pass that also gives `trial_summary`
    at `thresholds`: name the thresholds the summary is wanted at and one pass serves both."""
    return first_pass(tables, thresholds)[1]


def _stored(tables, thresholds: list[float]) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """`first_pass` from the stored digests and a stream of the trials they lack, when `tables` are
    a store's and the thresholds are the digest's; else None (stream it all)."""
    digested = getattr(tables, "digested", None)
    if digested is None or thresholds != THRESHOLDS:
        return None
    found = digested("bn", NAME, FIRST_PASS, lambda batches: reduce.run(_folds(), batches))
    if found is None:
        return None
    (summary, layers), stored = found
    if not stored:
        return summary, layers
    return _summaries(summary, stored["summary"]), _layers(layers, stored["layers"])


def _summaries(streamed: pd.DataFrame, stored: pa.Table) -> pd.DataFrame:
    """One frame of per-trial counts (as Summary.result: index trial_id, sorted, n > 0): a count
    a trial's rows lacked the column for is 0, as the stream counts it."""
    have = stored.to_pandas().set_index("trial_id")
    frames = [f for f in (streamed, have) if len(f.columns)]
    if not frames:
        return streamed
    both = pd.concat(frames) if len(frames) > 1 else frames[0]
    both.index = both.index.astype(str)
    both.index.name = "trial_id"
    both = both.fillna(0).astype(np.int64)
    return both[both["n"] > 0].sort_index()


def _layers(streamed: pd.DataFrame, stored: pa.Table) -> pd.DataFrame:
    """One frame of γ by layer (as Layers.result: by trial id, then layer index)."""
    have = stored.to_pandas()
    if streamed.empty:
        both = have
    elif have.empty:
        return streamed
    else:
        both = pd.concat([streamed, have], ignore_index=True)  # categoricals of different categories: object
    for c in ("trial_id", *reduce.NAMED):
        if c in both and not isinstance(both[c].dtype, pd.CategoricalDtype) and not \
                pd.api.types.is_numeric_dtype(both[c]):  # text of categories that differed
            both[c] = both[c].astype("category")
    # by the names' order applied to the trial codes: no sort of a million strings
    names = np.asarray(both["trial_id"].cat.categories.astype(str))
    rank = np.empty(len(names), np.int64)
    rank[np.argsort(names, kind="stable")] = np.arange(len(names))
    key = rank[both["trial_id"].cat.codes.to_numpy()]
    place = key.astype(np.int64) << 32 | both["layer_index"].to_numpy().astype(np.int64)
    if len(place) and not (place[1:] >= place[:-1]).all():
        both = both.iloc[np.argsort(place, kind="stable")]
    return both.reset_index(drop=True)
