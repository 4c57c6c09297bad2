"""Joining per-trial tables (`bn`, `clamp`, `dead_relu`, ...) to `trials`, at the size of a real
sweep: 1,000 trials of a deep ResNet give the `bn` table 8 million rows, and a `DataFrame.merge`
on the string `trial_id` hashes every one of them (seconds per figure). Here each distinct id is
looked up once and the rows follow by integer codes; string columns brought over from `trials`
arrive as categoricals (codes into a handful of values, not millions of strings)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd


def columns(tables: Mapping[str, pd.DataFrame], name: str, cols: Iterable[str]) -> pd.DataFrame:
    """`tables[name]` with only `cols` (those it has). A store's tables (`LazyTables`) read just
    those columns from Parquet, with `trial_id` as a categorical; a plain dict is sliced."""
    cols = list(dict.fromkeys(cols))
    read = getattr(tables, "columns", None)
    if read is not None:
        return read(name, cols)
    table = tables[name]
    return table[[c for c in cols if c in table]]


def among(column, values) -> np.ndarray:
    """`column.isin(values)` for a column or index of trial ids (or other text), as a boolean
    array. The same answer as pandas, by a hash of the distinct values: pandas 3's `isin` on its
    Arrow-backed text makes one Python object per value asked about, 25-45 ms for 10,000 ids (0.5
    ms here), and the figures of a 10,000-trial study ask hundreds of times."""
    series = pd.Series(column, copy=False)
    if isinstance(series.dtype, pd.CategoricalDtype):
        codes, uniques = series.cat.codes.to_numpy(), series.cat.categories
    else:
        codes, uniques = pd.factorize(series)
    wanted = pd.Index(pd.Series(list(values) if isinstance(values, (set, frozenset)) else values, dtype=object)
                      .to_numpy(dtype=object, na_value=None))
    hit = np.append(pd.Index(np.asarray(uniques, dtype=object)).isin(wanted), wanted.hasnans)  # code -1: missing
    return hit[codes]


def id_codes(ids: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """(codes, distinct ids) of a `trial_id` column: a categorical's own codes, or a factorisation
    (one hash per row, done once)."""
    if isinstance(ids.dtype, pd.CategoricalDtype):
        return ids.cat.codes.to_numpy(), ids.cat.categories
    codes, uniques = pd.factorize(ids)
    return codes, pd.Index(uniques)


def trial_rows(ids: pd.Series, trials: pd.DataFrame) -> np.ndarray:
    """For each row of a per-trial table, the position of its trial in `trials`, -1 where the
    trial is not there. `trials` must have unique ids."""
    codes, uniques = id_codes(ids)
    pos = pd.Index(trials["trial_id"]).get_indexer(uniques)
    return np.append(pos, -1)[codes]  # code -1 (a missing id) picks the appended -1


def _take(column: pd.Series, rows: np.ndarray):
    """`column[rows]`: text as a categorical with sorted categories (so sorting by it still sorts
    by the text), anything else as its own array type."""
    if pd.api.types.is_string_dtype(column.dtype) or column.dtype == object:
        codes, cats = pd.factorize(column, sort=True)
        return pd.Categorical.from_codes(codes[rows], cats)
    return column.array.take(rows)


def with_trials(table: pd.DataFrame | None, trials: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """`table` joined to the given trials' columns: an inner join on trial_id that keeps the
    table's row order, as `table.merge(trials[cols], on="trial_id")` would."""
    if table is None or table.empty or "trial_id" not in table or trials.empty:
        return pd.DataFrame()
    cols = [c for c in dict.fromkeys(cols) if c in trials and c != "trial_id" and c not in table]
    if not trials["trial_id"].is_unique:  # not from a store (one row per trial there); the general way
        return table.merge(trials[["trial_id", *cols]], on="trial_id", how="inner")
    rows = trial_rows(table["trial_id"], trials)
    keep = rows >= 0
    out = (table if keep.all() else table[keep]).reset_index(drop=True)
    rows = rows[keep]
    return out.assign(**{c: _take(trials[c], rows) for c in cols})


def per_trial_means(ids: pd.Series, values: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Per trial (index: trial_id, sorted): the row count `n` and the mean of each named array,
    from integer bincounts instead of a groupby over millions of string keys."""
    codes, uniques = id_codes(ids)
    valid = codes >= 0
    every = bool(valid.all())
    codes = codes if every else codes[valid]
    n = np.bincount(codes, minlength=len(uniques))
    seen = n > 0
    frame = pd.DataFrame({"n": n[seen]}, index=pd.Index(np.asarray(uniques, dtype=object)[seen], name="trial_id"))
    for name, v in values.items():
        v = np.asarray(v) if every else np.asarray(v)[valid]
        # a share (boolean) counts its True rows: no float weights over millions of rows
        sums = np.bincount(codes[v], minlength=len(uniques)) if v.dtype == bool else \
            np.bincount(codes, weights=v.astype(float, copy=False), minlength=len(uniques))
        frame[name] = sums[seen] / n[seen]
    return frame.sort_index()
