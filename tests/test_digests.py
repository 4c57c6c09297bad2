"""Digests (sweeper.digests): `sweeper compact` stores the γ figures' first pass over `bn` for the
trials it merges; drawing reads that for them and streams the rest, with the same numbers as
streaming every row, whatever mix of compacted, rerun and new trials the store holds."""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest

from sweeper.analysis import digest, reduce
from sweeper.analysis.cohort import Restricted
from sweeper.analysis.draw import LazyTables
from sweeper.analysis.frankle import FIGURES
from sweeper.analysis.frankle.common import SPARSITY_THRESHOLDS
from sweeper.bench.figures import generate_store, rerun_trial
from sweeper.compact import compact_study
from sweeper.segments import FOLDER
from sweeper.store import Store

STUDY = "bench-figures"
MODEL = "resnet-8"
BN_FIGURES = ("gamma_distribution", "beta_distribution", "gamma_sparsity", "gamma_sparsity_vs_bn_params",
              "gamma_by_layer")


def counted(store: Store) -> dict[str, list]:
    """The store's streamed reads of `bn` rows, and its digest reads (the real store does them)."""
    calls = {"reduce": [], "digested": []}
    reduce_, digested = store.reduce, store.reduce_digested

    def counting_reduce(study, table, *args, **kwargs):
        calls["reduce"].append(table)
        return reduce_(study, table, *args, **kwargs)

    def counting_digested(study, table, *args, **kwargs):
        calls["digested"].append(table)
        return digested(study, table, *args, **kwargs)

    store.reduce, store.reduce_digested = counting_reduce, counting_digested
    return calls


def first_pass(tables) -> tuple[pd.DataFrame, pd.DataFrame]:
    return digest.first_pass(tables, SPARSITY_THRESHOLDS)


def streamed(tables) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The first pass with every row streamed (no digest)."""
    return tuple(reduce.scan(tables, "bn", [reduce.Summary(SPARSITY_THRESHOLDS), reduce.Layers()]))


def assert_same(a, b):
    pd.testing.assert_frame_equal(a[0], b[0])
    pd.testing.assert_frame_equal(a[1].astype({"trial_id": str}), b[1].astype({"trial_id": str}),
                                  check_categorical=False)
    assert len(a[0]) and len(a[1])


def add_trials(root: Path, total: int, tmp: Path) -> list[str]:
    """Trials beyond those `root` holds, up to `total`, committed as own files (a run since the
    compaction): generated aside, their files copied in. Returns their ids."""
    generate_store(tmp, trials=total, model=MODEL, workers=2)
    have = {p.stem for p in (root / STUDY / "trials").glob("*.parquet")} | set(Store(root).read(STUDY, "trials")["trial_id"])
    new = sorted({p.stem for p in (tmp / STUDY / "trials").glob("*.parquet")} - have)
    for tid in new:
        for table in ("bn", "trials"):  # the table first, then the trials row: as a trial commits
            (root / STUDY / table / f"{tid}.parquet").write_bytes((tmp / STUDY / table / f"{tid}.parquet").read_bytes())
    return new


def test_compaction_stores_the_first_pass_and_drawing_reads_it_with_the_same_numbers(tmp_path):
    root = tmp_path / "store"
    generate_store(root, trials=12, model=MODEL, workers=2)
    store = Store(root)
    want = streamed(LazyTables(store, STUDY))
    result = compact_study(store, STUDY)
    entry = json.loads((root / STUDY / FOLDER / f"{result.segment}.json").read_text())["tables"]["bn"]["digests"]
    assert entry[digest.NAME]["key"] == digest.FIRST_PASS.key and set(entry[digest.NAME]["files"]) == {"summary", "layers"}

    tables = LazyTables(store, STUDY)
    calls = counted(store)
    have = first_pass(tables)
    assert_same(have, want)
    assert calls == {"reduce": [], "digested": ["bn"]}  # no stream of bn rows: every trial digested

    # a rerun (its own file wins over the part) and new trials: streamed, the others from the digest
    tid = sorted(want[0].index)[0]
    rerun_trial(store, tid, 7.0)
    new = add_trials(root, 16, tmp_path / "more")
    assert len(new) == 4
    tables = LazyTables(store, STUDY)
    calls = counted(store)
    mixed = first_pass(tables)
    assert calls == {"reduce": [], "digested": ["bn"]}
    assert_same(mixed, streamed(LazyTables(store, STUDY)))
    assert len(mixed[0]) == 16 and set(new) <= set(mixed[0].index)
    assert mixed[0].loc[tid, "below_init0"] == want[0].loc[tid, "below_init0"]
    assert mixed[0].loc[tid, "below3"] == 0 < want[0].loc[tid, "below3"]  # γ = 7 everywhere now: none below 0.2
    others = want[0].index != tid
    pd.testing.assert_frame_equal(mixed[0].loc[want[0].index[others]], want[0][others])


def test_a_cohort_takes_its_trials_from_the_digest_and_the_stream(tmp_path):
    root = tmp_path / "store"
    generate_store(root, trials=10, model=MODEL, workers=2)
    store = Store(root)
    compact_study(store, STUDY)
    old = sorted(store.read(STUDY, "trials")["trial_id"])
    rerun_trial(store, old[1], 0.01)
    new = add_trials(root, 14, tmp_path / "more")
    keep = frozenset(old[:3] + new[:2])  # compacted, one rerun since, and new
    have = first_pass(Restricted(LazyTables(store, STUDY), keep))
    assert set(have[0].index) == keep and set(have[1]["trial_id"].astype(str)) == keep
    assert_same(have, streamed(Restricted(LazyTables(store, STUDY), keep)))


def test_figures_from_a_digested_store_equal_those_before_compaction(tmp_path):
    root = tmp_path / "store"
    generate_store(root, trials=10, model=MODEL, workers=2)
    store = Store(root)

    def draw(out: Path) -> dict[str, bytes]:
        tables = LazyTables(store, STUDY)
        tables.batch_rows = 700  # several batches a pass
        for name in BN_FIGURES:
            assert FIGURES[name](tables, out), name
        return {p.name: p.read_bytes() for p in sorted(out.glob("*.csv"))}

    before = draw(tmp_path / "before")
    compact_study(store, STUDY)
    assert draw(tmp_path / "after") == before and before


def compacted_then_edited(root: Path, edit) -> Store:
    """8 trials compacted, then the segment's `bn` manifest entry changed by `edit(entry)`."""
    generate_store(root, trials=8, model=MODEL, workers=2)
    store = Store(root)
    manifest = root / STUDY / FOLDER / f"{compact_study(store, STUDY).segment}.json"
    doc = json.loads(manifest.read_text())
    edit(doc["tables"]["bn"])
    manifest.write_text(json.dumps(doc))
    return store


def test_a_digest_of_another_version_or_thresholds_is_not_used(tmp_path):
    def older(entry):  # written by another version
        entry["digests"][digest.NAME]["key"] = "0:[0.5]"

    store = compacted_then_edited(tmp_path / "store", older)
    calls = counted(store)
    tables = LazyTables(store, STUDY)
    assert_same(first_pass(tables), streamed(LazyTables(store, STUDY)))
    assert calls["reduce"] == ["bn"]  # streamed: the stored digest is not this pass
    other = digest.first_pass(LazyTables(store, STUDY), [0.3])  # thresholds the digest lacks: streamed
    assert "below0" in other[0] and len(other[0]) == 8


def test_a_digest_that_fails_is_left_out_with_a_warning_and_the_store_reads_the_same(tmp_path, monkeypatch):
    root = tmp_path / "store"
    generate_store(root, trials=8, model=MODEL, workers=2)
    store = Store(root)
    want = streamed(LazyTables(store, STUDY))

    def broken(batches):
        raise MemoryError("out of memory")

    monkeypatch.setattr(digest, "FIRST_PASS", digest.FIRST_PASS.__class__(
        **{**digest.FIRST_PASS.__dict__, "compute": broken}))
    from sweeper import digests

    monkeypatch.setitem(digests.DIGESTS._entries, digest.NAME, digest.FIRST_PASS)
    with pytest.warns(UserWarning, match="digest first-pass of bn not written"):
        segment = compact_study(store, STUDY).segment
    doc = json.loads((root / STUDY / FOLDER / f"{segment}.json").read_text())
    noted = doc["tables"]["bn"]["digests"][digest.NAME]
    assert "files" not in noted and "MemoryError: out of memory" in noted["failed"]
    assert sorted(p.name for p in (root / STUDY / FOLDER).iterdir()) == [f"{segment}.json"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(first_pass(LazyTables(store, STUDY)), want)
        assert compact_study(store, STUDY).segment is None  # the failure is noted: not tried on every compaction


def test_a_store_compacted_before_digests_gains_them_on_its_next_compaction(tmp_path, capsys):
    from sweeper.cli import main

    root = tmp_path / "store"
    store = compacted_then_edited(root, lambda entry: entry.pop("digests"))  # as an earlier version wrote it
    for f in (root / STUDY / FOLDER).glob("*.parquet"):
        f.unlink()
    want = streamed(LazyTables(store, STUDY))
    assert main(["compact", str(root)]) == 0
    assert "merged bn 8, trials 8 trials into segment" in capsys.readouterr().out  # rewritten, with the digest
    calls = counted(store)
    assert_same(first_pass(LazyTables(store, STUDY)), want)
    assert calls == {"reduce": [], "digested": ["bn"]}
    assert main(["compact", str(root)]) == 0
    assert "nothing to compact" in capsys.readouterr().out


def test_figures_on_an_object_store_read_the_digest_and_fetch_bn_once(s3_server, tmp_path):
    """Compacted on S3, one trial rerun since: the first pass comes from the digest and that trial's
    rows (whose spool, a part of the table, is dropped); the percentiles' pass fetches `bn` and spools
    what the histograms read (sweeper.analysis.spool): one fetch of the rows in all."""
    s3_server.create_bucket("digests")
    uri = s3_server.uri("digests", "store")
    local = tmp_path / "local"
    for root in (uri, local):
        generate_store(root, trials=10, model=MODEL, workers=2)
        compact_study(Store(root), STUDY)
        store = Store(root)
        rerun_trial(store, sorted(store.read(STUDY, "trials")["trial_id"])[2], 0.03)
    drawn = {}
    for where, root in (("s3", uri), ("local", local)):
        tables = LazyTables(Store(root), STUDY)
        tables.batch_rows = 700
        calls = counted(tables.store)
        for name in BN_FIGURES:
            assert FIGURES[name](tables, tmp_path / where), name
        drawn[where] = {p.name: p.read_bytes() for p in sorted((tmp_path / where).glob("*.csv"))}
        assert calls["digested"] == ["bn"]
        assert calls["reduce"] == (["bn"] if where == "s3" else ["bn", "bn"])
        tables.close()
    assert drawn["s3"] == drawn["local"] and drawn["s3"]


def test_a_digest_file_gone_is_streamed_instead_at_once(tmp_path):
    """Deleted by hand: the figures stream those trials' rows (no retrying as for a file a compaction
    deletes, which a new listing finds elsewhere)."""
    root = tmp_path / "store"
    generate_store(root, trials=8, model=MODEL, workers=2)
    store = Store(root)
    want = streamed(LazyTables(store, STUDY))
    compact_study(store, STUDY)
    for f in (root / STUDY / FOLDER).glob("*.layers.parquet"):
        f.unlink()
    calls = counted(store)
    started = time.monotonic()
    assert_same(first_pass(LazyTables(store, STUDY)), want)
    assert time.monotonic() - started < 10 and calls["digested"] == ["bn"]
