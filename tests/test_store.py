"""The Parquet store: layout, atomic commits, corrupt files, schema evolution."""
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sweeper.store import Store, load
from sweeper.experiments.train.spec import TrainSpec
from sweeper.trial import TrialContext, TrialResult, execute


def spec(seed=0, **kw):
    return TrainSpec.from_values({"dataset": "digits", "model": "resnet-8-4", "epochs": 1, "seed": seed, **kw})


def commit(store, s, status="done", acc=0.5, tables=None):
    row = {"trial_id": s.trial_id, "study": "st", "experiment": "train", "status": status, "error": "",
           **s.to_row(), "test_acc": acc if status == "done" else None}
    store.commit_trial("st", s, row, tables or {})


def test_layout_and_pandas_reads_each_table(tmp_path):
    store = Store(tmp_path)
    store.ensure_writable()
    for seed in range(3):
        commit(store, spec(seed), tables={"curves": pd.DataFrame({"epoch": [1, 2], "test_acc": [0.1, 0.2]})})
    commit(store, spec(9), status="failed")
    trials = pd.read_parquet(tmp_path / "st" / "trials")
    assert len(trials) == 4 and set(trials["status"]) == {"done", "failed"}
    assert trials["test_acc"].isna().sum() == 1  # a failed row has the same columns, empty
    curves = pd.read_parquet(tmp_path / "st" / "curves")
    assert len(curves) == 6 and set(curves["trial_id"]) == {spec(s).trial_id for s in range(3)}
    assert sorted(os.listdir(tmp_path / "st" / "trials")) == sorted(f"{spec(s).trial_id}.parquet" for s in (0, 1, 2, 9))
    assert (tmp_path / "_sweeper.json").exists() and store.schema_version() == 1
    assert load(tmp_path, "st").shape[0] == 4


def test_recommitting_a_trial_replaces_it_never_doubles(tmp_path):
    store = Store(tmp_path)
    s = spec()
    commit(store, s, status="failed")
    commit(store, s, acc=0.7)
    commit(store, s, acc=0.7)
    trials = store.read("st")
    assert len(trials) == 1 and trials["status"].iloc[0] == "done"
    status = store.trial_status("st")
    assert status.done == {s.trial_id} and not status.failed


def test_hidden_partial_files_are_invisible_to_readers(tmp_path):
    store = Store(tmp_path)
    commit(store, spec())
    # what a writer killed between write and rename leaves behind
    partial = tmp_path / "st" / "trials" / f".{spec(1).trial_id}.parquet.deadbeef.tmp"
    partial.write_bytes(b"PAR1 half a file")
    assert len(pd.read_parquet(tmp_path / "st" / "trials")) == 1
    assert len(store.read("st")) == 1 and store.trial_status("st").done == {spec().trial_id}


def test_corrupt_file_is_reported_and_its_trial_reruns(tmp_path):
    store = Store(tmp_path)
    commit(store, spec(0))
    commit(store, spec(1))
    bad = tmp_path / "st" / "trials" / f"{spec(1).trial_id}.parquet"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    status = store.trial_status("st")
    assert status.done == {spec(0).trial_id} and status.corrupt == [str(bad)]
    with pytest.warns(UserWarning, match=str(bad)):
        assert len(store.read("st")) == 1


def test_older_schema_files_still_read(tmp_path):
    store = Store(tmp_path)
    commit(store, spec(0))
    # a file from an older version: fewer columns
    old = pa.table({"trial_id": ["old"], "study": ["st"], "status": ["done"], "test_acc": [0.3]})
    pq.write_table(old, tmp_path / "st" / "trials" / "old.parquet")
    trials = store.read("st")
    assert len(trials) == 2 and trials.loc[trials.trial_id == "old", "model"].isna().all()


def test_unwritable_store_is_refused_before_work(tmp_path):
    from sweeper.errors import SweeperError

    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a path under a regular file cannot be created, even by root
    with pytest.raises(SweeperError, match="not writable"):
        Store(blocker / "store").ensure_writable()


def test_execute_records_failures_as_rows(tmp_path):
    store = Store(tmp_path)
    s = spec(lr=1e30)  # diverges at once
    row = execute(s, TrialContext("st", store))
    assert row["status"] == "failed" and "TrialDiverged" in row["error"]
    assert store.trial_status("st").failed.keys() == {s.trial_id}
    assert not (tmp_path / "st" / "bn").exists()  # a failed trial writes no result tables


def test_writer_killed_between_write_and_commit_leaves_nothing_visible(tmp_path):
    """Fault injection: the writing process dies (SIGKILL) after writing a file aside and before
    renaming it into place."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import os, signal
        from sweeper.store import Store
        from sweeper.experiments.train.spec import TrainSpec
        import pandas as pd
        s = TrainSpec.from_values({{"dataset": "digits", "model": "resnet-8-4", "epochs": 1, "seed": 5}})
        store = Store({str(tmp_path)!r})
        os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)  # die at the commit
        row = {{"trial_id": s.trial_id, "study": "st", "experiment": "train", "status": "done", "error": "",
               **s.to_row(), "test_acc": 0.9}}
        store.commit_trial("st", s, row, {{"bn": pd.DataFrame({{"gamma": [1.0]}})}})
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == -9
    leftovers = list((tmp_path / "st").rglob("*.tmp"))
    assert leftovers and all(p.name.startswith(".") for p in leftovers)  # written aside, hidden
    store = Store(tmp_path)
    assert not store.trial_status("st").done  # not committed: the next run does it again
    assert store.read("st", "bn").empty
    assert pd.read_parquet(tmp_path / "st" / "bn").empty
