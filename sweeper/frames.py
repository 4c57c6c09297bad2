"""Arrow record batches into one pandas DataFrame, each column written batch by batch into an array
sized up front.

Why not `Table.to_pandas()`: it needs the whole Arrow table in memory beside the frame it builds,
plus a unified copy of every dictionary column. Loading `trial_id` and `gamma` of a 10,000-trial
ResNet-110-sized `bn` table (82 million rows, a 0.78 GB frame) peaked at 2.6 GB that way; filled
batch by batch it holds the frame and one batch. The frame is the one `to_pandas()` gives (same
dtypes, categories in order of first appearance, as Arrow unifies dictionaries); tests compare them.

Only columns whose pandas form is a plain numpy array are streamed (numbers, and dictionary-encoded
text as categoricals); a read with other columns (text, booleans, lists, timestamps) is converted by
`to_pandas()` as before: those are the small tables.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def streamable(schema: pa.Schema) -> bool:
    """Whether every column of `schema` can be filled batch by batch (see the module doc); a read
    of no columns is not (its frame still has a row per row read)."""
    return len(schema) > 0 and all(_kind(f.type) is not None for f in schema)


def _kind(t: pa.DataType) -> str | None:
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_dictionary(t) and pa.types.is_string(t.value_type):
        return "category"
    return None


class Ids:
    """Dense codes for trial ids: the given ones (other trials' rows get -1), or every id seen."""

    def __init__(self, known: Iterable[str] | None = None):
        self.fixed = known is not None
        self.names = list(known) if known is not None else []
        self.code = {name: i for i, name in enumerate(self.names)}

    @property
    def index(self) -> pd.Index:
        return pd.Index(self.names, dtype=str) if self.names else pd.Index([], dtype=object)

    def __len__(self) -> int:
        return len(self.names)

    def codes(self, column: pa.Array) -> np.ndarray:
        """Each row's code (-1: an id not wanted, or null)."""
        rows, distinct = split(column)
        return self.positions(distinct)[rows]

    def positions(self, distinct) -> np.ndarray:
        """The code of each of a batch's distinct ids, and -1 appended: `positions(d)[rows]` are the
        rows' codes (row -1, a null, picks the -1)."""
        return np.append(self._lookup(distinct), -1)

    def _lookup(self, names) -> np.ndarray:
        """Each name's code, by a dict: a pandas Index rebuilt as ids arrive cost 1-2 ms a batch."""
        code = self.code
        if not self.fixed:
            for name in names:
                if name not in code:
                    code[name] = len(self.names)
                    self.names.append(name)
        return np.fromiter((code.get(name, -1) for name in names), np.int64, len(names))


def split(column: pa.Array) -> tuple[np.ndarray, list]:
    """(rows, distinct): each row's position among the column's distinct values (-1: null). A
    dictionary column is already split so (its dictionary: a row group's ids, a few hundred)."""
    if pa.types.is_dictionary(column.type):
        indices = column.indices if not column.null_count else pc.fill_null(column.indices, -1)
        return indices.to_numpy(zero_copy_only=False), column.dictionary.to_pylist()
    rows, names = pd.factorize(column.to_numpy(zero_copy_only=False))
    return rows, list(names)


class _Categories(Ids):
    """One category list for a column whose batches each bring their own dictionary: each batch's
    dictionary positions are mapped to positions in the list, new values appended as first seen."""

    def dtype(self) -> np.dtype:
        """The narrowest codes pandas keeps for this many categories (int8 up to 127, then int16,
        ...): codes written in it need no converting copy at the end."""
        return pd.Categorical.from_codes(np.empty(0, np.int64), categories=pd.RangeIndex(len(self))).codes.dtype

    def categorical(self, codes: np.ndarray) -> pd.Categorical:
        return pd.Categorical.from_codes(codes, categories=pd.Index(self.names))  # text dtype as to_pandas gives it


def fill(batches: Iterable[pa.RecordBatch], schema: pa.Schema, rows: int) -> pd.DataFrame:
    """The frame of `rows` rows that `batches` (of `schema`, streamable) hold, in their order."""
    out: dict[str, np.ndarray] = {}
    categories: dict[str, _Categories] = {}
    for f in schema:
        kind = _kind(f.type)
        if kind == "category":
            categories[f.name] = _Categories()
            out[f.name] = np.empty(rows, dtype=np.int8)
        else:
            out[f.name] = np.empty(rows, dtype=f.type.to_pandas_dtype())
    at = 0
    for batch in batches:
        n = batch.num_rows
        if at + n > rows:
            raise RuntimeError(f"more rows than the {rows} counted: the files changed while being read")
        for f in schema:
            column = batch.column(f.name)
            if f.name in categories:
                codes = categories[f.name].codes(column)
                if categories[f.name].dtype() != out[f.name].dtype:  # more categories than it holds
                    out[f.name] = out[f.name].astype(categories[f.name].dtype())
                out[f.name][at:at + n] = codes
                continue
            if column.null_count and out[f.name].dtype.kind in "iu":
                # pandas holds a whole integer column with a missing value as float64 (NaN)
                out[f.name] = out[f.name].astype(np.float64)
            out[f.name][at:at + n] = column.to_numpy(zero_copy_only=False)
        at += n
    if at != rows:
        raise RuntimeError(f"{at} rows read of the {rows} counted: the files changed while being read")
    columns = {}
    for f in schema:
        columns[f.name] = categories[f.name].categorical(out.pop(f.name)) if f.name in categories else out.pop(f.name)
    return pd.DataFrame(columns, copy=False)
