"""Compaction (issue 19): `sweeper compact` merges per-trial files into a few large ones per table,
and at every moment, whatever is killed when, readers see every trial exactly once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sweeper import load
from sweeper.bench.figures import generate_store, rerun_trial
from sweeper.cli import main
from sweeper.compact import compact_study, maybe_compact
from sweeper.segments import FOLDER, PREFIX
from sweeper.store import Store

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
STUDY = "bench-figures"
MODEL = "resnet-8"
ROWS = 336  # its BN channels: `bn` rows a trial


def make(root, trials=24, seed=0):
    return generate_store(root, trials=trials, model=MODEL, seed=seed, workers=2)


def snapshot(store: Store) -> tuple[pd.DataFrame, pd.DataFrame, set]:
    """What a reader sees: trials and bn, sorted, and the done ids."""
    def norm(d):
        return d.sort_values(["trial_id", *[c for c in d.columns if c != "trial_id"]]).reset_index(drop=True)
    trials = store.read(STUDY, "trials")
    bn = store.read(STUDY, "bn")
    return norm(trials[sorted(trials.columns)]), norm(bn[sorted(bn.columns)]), store.trial_status(STUDY).done


def assert_same(a, b):
    pd.testing.assert_frame_equal(a[0], b[0])
    pd.testing.assert_frame_equal(a[1], b[1])
    assert a[2] == b[2]


def files(root, kind="*"):
    """The files under `root`, less the segments' digests in `_compacted` below it (checked by
    `segments_left`): the tables' files."""
    return sorted(p.relative_to(root).as_posix() for p in Path(root).rglob(kind)
                  if p.is_file() and FOLDER not in p.relative_to(root).parts[:-1])


def segments_left(root) -> list[str]:
    """The segments whose manifest is in the study's `_compacted` folder, after checking that
    nothing else is there but their digests (sweeper.digests): no pending file, no leftovers."""
    names = files(root / STUDY / FOLDER)
    live = [n[: -len(".json")] for n in names if n.endswith(".json")]
    for n in names:
        assert n.endswith(".json") or (n.endswith(".parquet") and n.split(".", 1)[0] in live), names
    return live


def test_compaction_reads_the_same_with_few_files_sorted_with_statistics(tmp_path):
    root = tmp_path / "store"
    make(root)
    store = Store(root)
    before = snapshot(store)
    assert len(before[0]) == 24 and before[1].groupby("trial_id").size().eq(ROWS).all()
    result = compact_study(store, STUDY)
    assert result.trials == {"trials": 24, "bn": 24} and result.files_before == 48 and result.files_after == 2
    assert_same(before, snapshot(store))
    left = files(root / STUDY, "*.parquet")
    assert len(left) == 2 and all(Path(p).name.startswith(PREFIX) for p in left)
    assert not [p for p in files(root) if Path(p).name.startswith(".")]  # nothing aside left
    assert segments_left(root) == [result.segment]
    assert sorted(files(root / STUDY / FOLDER)) == sorted(f"{result.segment}.{x}" for x in (
        "json", "bn.first-pass.summary.parquet", "bn.first-pass.layers.parquet"))  # the figures' digest of bn
    part = pq.ParquetFile(next((root / STUDY / "bn").glob("*.parquet")))
    ids = part.read(columns=["trial_id"]).column(0).to_pylist()
    assert ids == sorted(ids)  # sorted by trial id, each trial's rows together
    stats = part.metadata.row_group(0).column(part.schema_arrow.get_field_index("trial_id")).statistics
    assert stats.has_min_max and stats.min == ids[0]
    # pandas reading the folder (a glob) sees each row once, too
    assert len(pd.read_parquet(root / STUDY / "bn")) == 24 * ROWS
    assert compact_study(store, STUDY).segment is None  # nothing left to merge


def test_damaged_stray_and_corrupt_files_stay_out_of_compaction_where_status_shows_them(tmp_path):
    root = tmp_path / "store"
    make(root, trials=8)
    store = Store(root)
    ids = sorted(p.stem for p in (root / STUDY / "bn").glob("*.parquet"))
    (root / STUDY / "bn" / f"{ids[0]}.parquet").write_bytes(b"not parquet")  # damaged: reruns
    (root / STUDY / "bn" / f"{ids[1]} (1).parquet").write_bytes((root / STUDY / "bn" / f"{ids[1]}.parquet").read_bytes())
    result = compact_study(store, STUDY)
    assert result.trials == {"trials": 7, "bn": 7}  # the damaged trial keeps its own files (it reruns)
    st = store.trial_status(STUDY)
    assert ids[0] in st.damaged and len(st.done) == 7 and st.stray == [str(root / STUDY / "bn" / f"{ids[1]} (1).parquet")]
    assert (root / STUDY / "bn" / f"{ids[0]}.parquet").exists()
    bn = store.read(STUDY, "bn")
    assert bn["trial_id"].nunique() == 7 and bn.groupby("trial_id").size().eq(ROWS).all()


def test_load_pushes_columns_and_filters_down(tmp_path):
    root = tmp_path / "store"
    make(root, trials=12)
    store = Store(root)
    full = store.read(STUDY, "bn")
    some = sorted(full["trial_id"].unique())[:3]
    for _ in range(2):  # per-trial files, then compacted
        got = load(root, STUDY, "bn", columns=["trial_id", "gamma"], filters=[("trial_id", "in", some),
                                                                             ("layer_index", "=", 0)])
        want = full[full["trial_id"].isin(some) & full["layer_index"].eq(0)][["trial_id", "gamma"]]
        assert list(got.columns) == ["trial_id", "gamma"]
        pd.testing.assert_frame_equal(got.sort_values(["trial_id", "gamma"]).reset_index(drop=True),
                                      want.sort_values(["trial_id", "gamma"]).reset_index(drop=True))
        picked = store.read(STUDY, "bn", columns=["trial_id", "gamma"], trials=some)  # rows chosen by file
        assert set(picked["trial_id"]) == set(some) and len(picked) == 3 * ROWS
        cat = load(root, STUDY, "bn", columns=["trial_id"], categorical=["trial_id"])
        assert isinstance(cat["trial_id"].dtype, pd.CategoricalDtype) and len(cat) == len(full)
        expr = load(root, STUDY, "bn", columns=["gamma"], filters=pc.field("gamma") < 0.1)
        assert len(expr) == (full["gamma"] < 0.1).sum()
        compact_study(store, STUDY)
    with pytest.raises(Exception, match="filters"):
        load(root, STUDY, "bn", filters=[("gamma", "~", 1)])


def test_a_trial_rerun_after_compaction_wins_and_the_next_compaction_keeps_it_once(tmp_path):
    root = tmp_path / "store"
    make(root, trials=10)
    store = Store(root)
    compact_study(store, STUDY)
    old = store.read(STUDY, "bn")
    tid = sorted(old["trial_id"].unique())[0]
    assert store.trial_row(STUDY, tid) is None  # its own trials file is gone: the row is in the compacted part
    # rerun that trial with other results: a fresh own file beside the compacted part
    rerun_trial(store, tid, 7.0, test_acc=0.99)
    for _ in range(2):  # before and after the next compaction (which rewrites the segment)
        now = store.read(STUDY, "bn")
        assert len(now) == len(old) and now.loc[now["trial_id"] == tid, "gamma"].eq(7.0).all()
        t = store.read(STUDY, "trials")
        assert t["trial_id"].is_unique and len(t) == 10 and t.loc[t["trial_id"] == tid, "test_acc"].item() == 0.99
        assert len(pd.read_parquet(root / STUDY / "bn")) == len(old) or _ == 0  # a glob: once, after compaction
        compact_study(store, STUDY)
    assert len(segments_left(root)) == 1  # the replaced segment is gone, its digests too


def test_readers_during_compaction_see_every_trial_exactly_once(tmp_path):
    root = tmp_path / "store"
    make(root, trials=40)
    store = Store(root)
    want = snapshot(store)
    proc = subprocess.Popen([sys.executable, "-m", "sweeper.cli", "compact", str(root)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reads = 0
    while proc.poll() is None or reads < 3:
        bn = store.read(STUDY, "bn", columns=["trial_id"])
        counts = bn["trial_id"].value_counts()
        assert len(counts) == 40 and counts.eq(ROWS).all(), counts.describe()
        assert len(store.trial_status(STUDY).done) == 40
        reads += 1
    assert proc.wait() == 0, proc.stdout.read()
    assert_same(want, snapshot(store))


def test_a_writer_committing_during_compaction_loses_nothing(tmp_path):
    root = tmp_path / "store"
    make(root, trials=30)
    store = Store(root)
    writer = threading.Thread(target=make, args=(root,), kwargs={"trials": 60})  # 30 more, 30 again
    writer.start()
    results = []
    while writer.is_alive():
        results.append(compact_study(store, STUDY))
    writer.join()
    results.append(compact_study(store, STUDY))
    t, bn, done = snapshot(store)
    assert len(t) == 60 and t["trial_id"].is_unique and len(done) == 60
    assert bn.groupby("trial_id").size().eq(ROWS).all() and bn["trial_id"].nunique() == 60
    assert len(pd.read_parquet(root / STUDY / "bn")) == 60 * ROWS  # after the last compaction, a glob too


def test_two_compactions_at_once_both_commit_and_the_next_rewrites_them_into_one(tmp_path):
    root = tmp_path / "store"
    make(root, trials=30)
    store = Store(root)
    want = snapshot(store)
    procs = [subprocess.Popen([sys.executable, "-m", "sweeper.cli", "compact", str(root)], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert_same(want, snapshot(store))
    # both merged the same trials (doubled), or the second only what the first had not deleted yet
    segs = store.segments(STUDY)
    compact_study(store, STUDY)
    assert_same(want, snapshot(store))
    left = 1 if segs.doubled() else len(segs.names)
    assert len(segments_left(root)) == left and len(files(root / STUDY, "*.parquet")) == 2 * left


def test_a_compaction_that_finds_its_files_merged_meanwhile_commits_no_empty_segment(tmp_path, monkeypatch):
    """The race above, made certain: this compaction lists the files, then another one (a real
    `sweeper compact`) merges and deletes all of them before this one reads any. This one then has
    nothing to merge: it commits nothing, rather than an empty segment that lingers in the store."""
    import sweeper.compact as compact

    root = tmp_path / "store"
    make(root, trials=12)
    store = Store(root)
    want = snapshot(store)
    real, other = compact._merge_table, []

    def after_another_compaction(*args, **kwargs):
        if not other:
            other.append(subprocess.run([sys.executable, "-m", "sweeper.cli", "compact", str(root)], env=ENV,
                                        capture_output=True, text=True, timeout=300))
        return real(*args, **kwargs)

    monkeypatch.setattr(compact, "_merge_table", after_another_compaction)
    result = compact_study(store, STUDY)
    assert other[0].returncode == 0, other[0].stdout + other[0].stderr
    assert result.segment is None and result.deleted == 0
    assert_same(want, snapshot(store))
    assert len(segments_left(root)) == 1 and len(files(root / STUDY, "*.parquet")) == 2


@pytest.mark.parametrize("point", ["written", "visible", "digested", "committed", "deleting"])
def test_sigkill_at_each_step_leaves_a_store_that_reads_correctly_and_the_next_run_finishes(tmp_path, point):
    root = tmp_path / "store"
    make(root, trials=16)
    store = Store(root)
    want = snapshot(store)
    r = subprocess.run([sys.executable, "-m", "sweeper.cli", "compact", str(root)], capture_output=True, text=True,
                       env={**ENV, "SWEEPER_COMPACT_FAULT": point}, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    assert_same(want, snapshot(store))  # killed: still every trial once
    assert main(["status", str(root), "--json"]) == 0
    r = subprocess.run([sys.executable, "-m", "sweeper.cli", "compact", str(root)], capture_output=True, text=True,
                       env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    assert_same(want, snapshot(store))
    assert len(files(root / STUDY, "*.parquet")) == 2  # finished: one part a table, no leftovers
    assert len(segments_left(root)) == 1
    assert not [p for p in files(root) if Path(p).name.startswith(".") and "compacted" in p]
    assert len(pd.read_parquet(root / STUDY / "bn")) == 16 * ROWS


def test_sigkill_from_outside_at_random_moments(tmp_path):
    root = tmp_path / "store"
    make(root, trials=40)
    store = Store(root)
    want = snapshot(store)
    for delay in (0.8, 1.6, 2.4):  # interpreter start, then inside the compaction
        proc = subprocess.Popen([sys.executable, "-m", "sweeper.cli", "compact", str(root)], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert_same(want, snapshot(store))
    compact_study(store, STUDY)
    assert_same(want, snapshot(store))
    assert len(pd.read_parquet(root / STUDY / "bn")) == 40 * ROWS


def test_automatic_compaction_past_the_threshold_and_status(tmp_path, capsys):
    root = tmp_path / "store"
    make(root, trials=12)
    store = Store(root)
    assert maybe_compact(store, STUDY, threshold=12) is None  # 12 files: not more than 12
    assert maybe_compact(store, STUDY, threshold=11).trials["bn"] == 12
    assert "compacted bench-figures: merged bn 12" in capsys.readouterr().out
    assert main(["status", str(root), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)["studies"][0]
    assert status["done"] == 12 and status["stray"] == 0 and status["damaged"] == 0
    assert main(["compact", str(root), "--study", STUDY]) == 0
    assert "nothing to compact" in capsys.readouterr().out
    assert main(["compact", str(root), "--study", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--study" in err[0] and STUDY in err[0]


def test_compaction_on_s3_reads_the_same_and_survives_a_kill(s3_store):
    make(s3_store, trials=12)
    store = Store(s3_store)
    want = snapshot(store)
    r = subprocess.run([sys.executable, "-m", "sweeper.cli", "compact", s3_store], capture_output=True, text=True,
                       env={**ENV, "SWEEPER_COMPACT_FAULT": "committed"}, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    assert_same(want, snapshot(store))
    assert main(["compact", s3_store]) == 0
    assert_same(want, snapshot(store))
    assert len(store.files(STUDY, "bn")) == 0 and len(store.file_infos(STUDY, "bn", parts=True)) == 1


def test_store_bench_reports_both_states_side_by_side():
    """`sweeper bench --only store` at 60 trials (a small model, to keep the test short): every key
    the issue names, for the uncompacted and compacted store, local and on S3 with request counts."""
    from sweeper.bench.run import format_table, run_bench
    from sweeper.bench import store as bench_store

    result = bench_store.measure_store(trials=60, model=MODEL)
    flat = bench_store.headline(result)
    for where in ("local", "s3"):
        r = result[where]
        assert r["trials"] == 60 and r["files_before"] == 120 and r["files_after"] == 2
        assert r["compact_seconds"] > 0
        for state in ("uncompacted", "compacted"):
            s = r[state]
            assert s["status_done"] == 60 and s["load_bn_rows"] == 60 * ROWS and s["figures_drawn"] >= 1
            assert all(s[k] > 0 for k in ("figures_seconds", "status_seconds", "load_bn_seconds", "peak_rss_gb"))
            assert f"store_{where}_{state}_figures_seconds" in flat
    assert {k for k, _ in run_bench.__globals__["ROWS"] if k.startswith("store_")} <= set(flat)
    # the compacted store answers with far fewer requests than the 120 files did
    assert result["s3"]["compacted"]["requests"]["figures"] * 5 < result["s3"]["uncompacted"]["requests"]["figures"]
    assert main(["bench", "--only", "store,nope"]) == 2
    assert "store_local_compacted_status_seconds" in format_table(
        {**flat, "date": "d", "environment": {"cpu": "c", "cores": 2, "torch": "t", "ray": "r", "python": "p"},
         "load_average_start": [], "threads_per_trial": 1, "bench_seconds": 1,
         "goals": {k: "" for k in run_bench.__globals__["GOALS"]}, "met": {}})


def test_an_object_store_fetches_nearby_columns_of_a_row_group_in_one_request(monkeypatch):
    """Reading `trial_id` and γ, β (eight columns apart) of a compacted part on S3 costs as many
    requests as reading `trial_id` alone: one ranged GET per row group (storeread.NETWORK), not
    one per column chunk. Counted on the bench's S3 server, which counts what it answers."""
    from sweeper import segments
    from sweeper.bench.store import _CountingS3

    monkeypatch.setattr(segments, "ROW_GROUP_ROWS", 2 * ROWS)  # row groups of two trials: 8 of them
    s3 = _CountingS3()
    try:
        uri = s3.bucket("rowgroups")
        make(uri, trials=16)
        compact_study(Store(uri), STUDY)
        counts = {}
        for cols in (["trial_id"], ["trial_id", "gamma", "beta"]):
            before = s3.total()
            frame = load(uri, STUDY, "bn", columns=cols, categorical=["trial_id"])
            assert len(frame) == 16 * ROWS
            counts[len(cols)] = s3.total() - before
    finally:
        s3.stop()
    assert counts[3] == counts[1], counts
