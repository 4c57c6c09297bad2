"""Numeric and categorical reads are filled batch by batch (sweeper.frames): the frame must be the one
`to_pandas()` gives, whatever the batches' dictionaries, nulls and file layout."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sweeper import frames, load
from sweeper.bench.figures import generate_store
from sweeper.compact import compact_study
from sweeper.store import Store

STUDY = "bench-figures"


def batch(ids, ints, floats) -> pa.RecordBatch:
    return pa.record_batch({
        "trial_id": pa.array(ids, pa.string()).dictionary_encode(),
        "layer_index": pa.array(ints, pa.int64()),
        "gamma": pa.array(floats, pa.float32()),
    })


def test_filled_batch_by_batch_equals_to_pandas():
    rng = np.random.default_rng(0)
    batches = [
        batch(["b", "a", "b"], [1, 2, 3], [0.5, 1.5, 2.5]),
        batch(["c", None, "a"], [4, 5, 6], [None, 1.0, 2.0]),  # own dictionary, a missing id
        batch([], [], []),
        # 300 more ids: the codes outgrow int8 mid-way
        batch([f"t{i:03d}" for i in rng.permutation(300)], list(range(300)), rng.random(300).tolist()),
        batch(["a", "t007"], [None, 8], [3.0, 4.0]),  # a missing integer: pandas makes the column float
    ]
    table = pa.Table.from_batches(batches)
    got = frames.fill(iter(batches), table.schema, table.num_rows)
    want = table.to_pandas()
    pd.testing.assert_frame_equal(got, want)
    assert got["trial_id"].cat.codes.dtype == np.int16 and got["layer_index"].dtype == np.float64


def test_a_count_that_does_not_match_the_batches_is_an_error():
    b = batch(["a"], [1], [1.0])
    with pytest.raises(RuntimeError, match="rows"):
        frames.fill(iter([b, b]), b.schema, 1)
    with pytest.raises(RuntimeError, match="rows"):
        frames.fill(iter([b]), b.schema, 2)


def test_store_reads_streamed_equal_the_arrow_table_path(tmp_path):
    """One store with a compacted part, trials rerun beside it (a partial scan of the part) and new
    per-trial files: numeric and categorical reads (streamed) give the rows of a read with a text
    column (one Arrow table, to_pandas), in the same order, with and without a row filter."""
    root = tmp_path / "store"
    generate_store(root, trials=12, model="resnet-8", workers=2)
    store = Store(root)
    compact_study(store, STUDY)
    generate_store(root, trials=20, model="resnet-8", seed=1, workers=2)  # 12 reruns, 8 new
    text = store.read(STUDY, "bn", columns=["trial_id", "layer_index", "gamma"])
    assert text["trial_id"].dtype != "category" and len(text) == 20 * 336
    streamed = store.read(STUDY, "bn", columns=["trial_id", "layer_index", "gamma"], categorical=["trial_id"])
    assert isinstance(streamed["trial_id"].dtype, pd.CategoricalDtype)
    pd.testing.assert_frame_equal(streamed.astype({"trial_id": str}), text.astype({"trial_id": str}))
    numbers = store.read(STUDY, "bn", columns=["gamma", "layer_index"])
    pd.testing.assert_frame_equal(numbers, text[["gamma", "layer_index"]])
    small = load(root, STUDY, "bn", columns=["trial_id", "gamma"], categorical=["trial_id"],
                 filters=pc.field("gamma") < 0.2)
    want = text.loc[text["gamma"] < 0.2, ["trial_id", "gamma"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(small.astype({"trial_id": str}), want.astype({"trial_id": str}))


def test_a_read_of_no_columns_keeps_a_row_per_row(tmp_path):
    root = tmp_path / "store"
    generate_store(root, trials=2, model="resnet-8", workers=1)
    assert Store(root).read(STUDY, "bn", columns=[]).shape == (2 * 336, 0)
