"""On an object store the first pass over `bn` spools the columns the later passes read to local disk
(sweeper.analysis.spool): the γ figures then fetch `bn` from the store once, not three times, and
draw exactly what they draw from a local copy of the same store."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from sweeper.analysis.draw import LazyTables
from sweeper.analysis.frankle import FIGURES
from sweeper.bench.figures import generate_store
from sweeper.store import Store

STUDY = "bench-figures"
BN_FIGURES = ("gamma_distribution", "beta_distribution", "gamma_sparsity", "gamma_sparsity_vs_bn_params",
              "gamma_by_layer")


def counted(store: Store) -> list:
    """The store's streamed reads (a pass that takes what it can from stored digests, too: on a
    store not compacted, it streams every row), counted (the real store does the reading)."""
    calls = []
    reduce, digested = store.reduce, store.reduce_digested

    def counting(study, table, *args, **kwargs):
        calls.append(table)
        return reduce(study, table, *args, **kwargs)

    def counting_digested(study, table, *args, **kwargs):
        calls.append(table)
        return digested(study, table, *args, **kwargs)

    store.reduce, store.reduce_digested = counting, counting_digested
    return calls


def draw(tables, out: Path) -> dict[str, bytes]:
    for name in BN_FIGURES:
        assert FIGURES[name](tables, out), name
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.csv"))}


@pytest.fixture(scope="module")
def stores(s3_server, tmp_path_factory):
    s3_server.create_bucket("spool")
    uri = s3_server.uri("spool", "store")
    local = tmp_path_factory.mktemp("local")
    for root in (uri, local):  # the same generated trials (same seed) in both
        generate_store(root, trials=10, model="resnet-8", workers=2)
    return {"s3": uri, "local": local}


def test_the_figures_fetch_bn_once_from_an_object_store_and_draw_the_same(stores, tmp_path):
    s3 = LazyTables(Store(stores["s3"]), STUDY)
    s3.batch_rows = 700  # several batches, each with its own dictionary of trial ids
    local = LazyTables(Store(stores["local"]), STUDY)
    local.batch_rows = 700
    s3_reads, local_reads = counted(s3.store), counted(local.store)
    drawn = draw(s3, tmp_path / "s3")
    assert s3_reads == ["bn"]  # the percentiles and histograms read the spool
    folder = s3._spools.folder
    assert folder is not None and any(folder.iterdir())
    assert drawn == draw(local, tmp_path / "local") and drawn  # every CSV byte for byte
    assert local_reads == ["bn"] * 3 and local._spools.folder is None  # local disk: nothing spooled
    s3.close()
    assert not folder.exists()


def test_a_spool_that_cannot_be_written_is_dropped_and_the_store_read_again(stores, tmp_path):
    s3 = LazyTables(Store(stores["s3"]), STUDY)
    reads = counted(s3.store)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    s3._spools.folder = blocker  # spool files "inside" a file: every write fails, on any machine
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        drawn = draw(s3, tmp_path / "s3")
    assert any("could not spool" in str(w.message) for w in caught)
    assert reads == ["bn"] * 3 and drawn == draw(LazyTables(Store(stores["local"]), STUDY), tmp_path / "local")
