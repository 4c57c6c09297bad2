"""Reliability, results (issue 20): no result lost, doubled or faked, whatever damages the store.

Each class the red-team found is tried here by fault injection on a real Parquet store, many cases
per class through `hypothesis`:
- a damaged table other than `trials` (truncated, emptied, overwritten, deleted): its trial is not
  done, runs again, and its files are replaced;
- a trial that formed no batch is never `done`;
- extra copies of a trial's rows (a sync tool's conflicted copies, a row twice in a file, a row in
  another trial's file): every reader returns each trial once, and `status` lists the files;
- a column of the wrong type: the file is corrupt, by path, and nothing crashes;
- `--tolerance nan` cannot turn the nightly regression check off.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sweeper.cli import main
from sweeper.experiments.train.spec import TrainSpec
from sweeper.store import Store, load
from sweeper.trial import TrialContext, execute

CASES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TABLES = ("bn", "clamp", "curves")


def spec(seed: int, **kw) -> TrainSpec:
    return TrainSpec.from_values({"dataset": "digits", "model": "resnet-8-4", "epochs": 1, "batch_size": 32,
                                  "train_size": 200, "test_size": 100, "augment": "none", "seed": seed, **kw})


def commit(store: Store, s: TrainSpec, acc: float, tables=TABLES) -> None:
    """A done trial with small result tables (as a trial commits them, without training)."""
    frames = {
        "bn": pd.DataFrame({"layer": ["conv1"] * 4, "channel": range(4), "gamma": [acc, 0.2, 0.3, 0.4]}),
        "clamp": pd.DataFrame({"threshold": [0.0, 0.1], "test_acc": [acc, acc / 2]}),
        "curves": pd.DataFrame({"epoch": [1], "test_acc": [acc]}),
    }
    row = {"trial_id": s.trial_id, "study": "st", "experiment": "train", "status": "done", "error": "",
           **s.to_row(), "test_acc": acc}
    store.commit_trial("st", s, row, {t: frames[t] for t in tables})


@pytest.fixture
def fresh():
    """A new store folder per hypothesis example (function-scoped fixtures are shared by examples)."""
    folders = []

    def make() -> Path:
        folders.append(Path(tempfile.mkdtemp(prefix="reliab-")))
        return folders[-1]

    yield make
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


# -- a damaged table other than `trials` ----------------------------------------------------------
def damage(path: Path, how: str, cut: float) -> None:
    data = path.read_bytes()
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        path.write_bytes(data[: int(len(data) * cut)])
    elif how == "garbage":  # same length, other bytes (a torn or overwritten block)
        path.write_bytes(bytes((b + 1) % 256 for b in data))
    else:  # "empty"
        path.write_bytes(b"")


@CASES
@given(table=st.sampled_from(TABLES), how=st.sampled_from(["truncate", "delete", "garbage", "empty"]),
       cut=st.floats(0.0, 0.99), victim=st.integers(0, 2))
def test_a_damaged_table_makes_its_trial_not_done_until_rerun(fresh, table, how, cut, victim):
    store = Store(fresh())
    specs = [spec(i) for i in range(3)]
    for i, s in enumerate(specs):
        commit(store, s, 0.5 + i / 10)
    bad = specs[victim]
    path = Path(store.path("st", table, f"{bad.trial_id}.parquet"))
    damage(path, how, cut)

    status = store.trial_status("st")
    assert status.done == {s.trial_id for s in specs} - {bad.trial_id}  # the rest stay done
    assert status.damaged == {bad.trial_id: [str(path)]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reader may warn about the damaged file itself
        for t in TABLES:  # no table shows rows of a trial that is not whole
            assert bad.trial_id not in set(store.read("st", t)["trial_id"])
        assert len(store.read("st", "bn")) == 4 * 2

    commit(store, bad, 0.9)  # the rerun: every file replaced
    assert store.trial_status("st").done == {s.trial_id for s in specs}
    assert len(store.read("st", "bn")) == 4 * 3 and not any(Path(store.path("st")).rglob(".*.tmp"))


def test_a_row_from_before_the_tables_column_is_checked_against_the_files_it_has(tmp_path):
    """Rows written before `tables` existed: a damaged table file is caught; a deleted one cannot
    be told from one never written (the documented limit)."""
    store = Store(tmp_path)
    a, b = spec(0), spec(1)
    for s in (a, b):
        commit(store, s, 0.5)
        row = Path(store.path("st", "trials", f"{s.trial_id}.parquet"))
        pq.write_table(pq.read_table(row).drop_columns(["tables"]), row)  # as older code wrote it
    Path(store.path("st", "bn", f"{a.trial_id}.parquet")).write_bytes(b"PAR1")
    Path(store.path("st", "bn", f"{b.trial_id}.parquet")).unlink()
    status = store.trial_status("st")
    assert a.trial_id in status.damaged and status.done == {b.trial_id}


def test_a_truncated_bn_is_rerun_by_the_next_run_not_skipped(ray_local, tmp_path, capsys):
    """The red-team's case, end to end: `sweeper run`, truncate one trial's `bn`, run again."""
    study = tmp_path / "tiny.py"
    study.write_text("from sweeper import Study\nstudy = Study(name='tiny', dataset='digits', "
                     "axes={'seed': [0, 1]}, recipe={'model': 'resnet-8-4', 'epochs': 1, 'batch_size': 32, "
                     "'train_size': 200, 'test_size': 100, 'augment': 'none'}, measure=['bn'])\n")
    store = tmp_path / "store"
    assert main(["run", str(study), "--store", str(store), "--no-figures"]) == 0
    bn = pd.read_parquet(store / "tiny" / "bn")
    victim = sorted((store / "tiny" / "bn").glob("*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[:100])
    capsys.readouterr()
    assert main(["run", str(study), "--store", str(store), "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "1 of 2 trials already in the store" in out and "1 ran and done" in out
    again = pd.read_parquet(store / "tiny" / "bn")
    assert len(again) == len(bn) and set(again["trial_id"]) == set(bn["trial_id"])


# -- a trial that did no work ----------------------------------------------------------------------
def test_a_batch_larger_than_the_training_subset_is_refused_at_plan_time(tmp_path, capsys):
    study = tmp_path / "big_batch.py"
    study.write_text("from sweeper import Study\nstudy = Study(name='b', dataset='digits', axes={'seed': [0]}, "
                     "recipe={'model': 'resnet-8-4', 'train_size': 100, 'batch_size': 128, 'epochs': 1})\n")
    assert main(["plan", str(study)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "batch_size: 128 is larger than train_size 100" in err[0]


def test_a_trial_that_forms_no_batch_is_failed_never_done(tmp_path):
    """The whole training set (digits: 1,438 images) is smaller than a batch: the plan cannot know
    that without the data, the loop does."""
    store = Store(tmp_path)
    s = TrainSpec.from_values({"dataset": "digits", "model": "resnet-8-4", "epochs": 1, "batch_size": 2000,
                               "test_size": 100, "augment": "none"})
    row = execute(s, TrialContext("st", store))
    assert row["status"] == "failed" and "NothingTrained" in row["error"] and "formed no batch" in row["error"]
    assert not store.trial_status("st").done


# -- readers never double a trial ------------------------------------------------------------------
COPY_NAMES = ["{id} (conflicted copy 2026-01-01).parquet", "{id} (1).parquet",
              "{id}.sync-conflict-20260101-120000-ABCDEFG.parquet", "{id}-laptop.parquet", "copy of {id}.parquet"]


@CASES
@given(copies=st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["trials", "bn", "curves"]),
                                  st.sampled_from(COPY_NAMES)), max_size=6),
       twice=st.lists(st.integers(0, 3), max_size=2, unique=True),
       pasted=st.booleans())
def test_every_reader_returns_each_trial_once(fresh, copies, twice, pasted):
    folder = fresh()
    store = Store(folder)
    specs = [spec(i) for i in range(4)]
    accs = [0.55, 0.6, 0.65, 0.9]
    for s, acc in zip(specs, accs):
        commit(store, s, acc, tables=("bn", "curves"))
    expected_mean = sum(accs) / len(accs)
    strays = set()
    for i, table, name in copies:  # a sync tool's copies beside the originals
        src = folder / "st" / table / f"{specs[i].trial_id}.parquet"
        dst = folder / "st" / table / name.format(id=specs[i].trial_id)
        shutil.copyfile(src, dst)
        strays.add(str(dst))
    duplicates = set()
    for i in twice:  # the trial's own row twice in its file
        path = folder / "st" / "trials" / f"{specs[i].trial_id}.parquet"
        row = pq.read_table(path)
        pq.write_table(pa.concat_tables([row, row]), path)
        duplicates.add(str(path))
    if pasted:  # trial 0's row appended into trial 1's file: still one row each
        a = folder / "st" / "trials" / f"{specs[0].trial_id}.parquet"
        b = folder / "st" / "trials" / f"{specs[1].trial_id}.parquet"
        pq.write_table(pa.concat_tables([pq.read_table(b).slice(0, 1), pq.read_table(a).slice(0, 1)]), b)
        duplicates.add(str(b))

    trials = load(folder, "st")  # what the notebook and `sweeper.load` users read
    assert sorted(trials["trial_id"]) == sorted(s.trial_id for s in specs)
    assert trials["test_acc"].mean() == pytest.approx(expected_mean)
    assert trials.set_index("trial_id").loc[specs[3].trial_id, "test_acc"] == 0.9
    for table, per_trial in (("bn", 4), ("curves", 1)):
        frame = store.read("st", table)
        assert frame.groupby("trial_id").size().to_dict() == {s.trial_id: per_trial for s in specs}
        slim = store.read("st", table, columns=["gamma" if table == "bn" else "epoch"], categorical=["trial_id"])
        assert len(slim) == len(frame)
    status = store.trial_status("st")
    assert status.done == {s.trial_id for s in specs}
    assert set(status.stray) == strays and set(status.duplicate) == duplicates


def test_status_names_stray_and_duplicate_files(tmp_path, capsys):
    store = Store(tmp_path)
    s = spec(0)
    commit(store, s, 0.5)
    copy = tmp_path / "st" / "trials" / f"{s.trial_id} (conflicted copy).parquet"
    shutil.copyfile(tmp_path / "st" / "trials" / f"{s.trial_id}.parquet", copy)
    assert main(["status", str(tmp_path), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["studies"][0]
    assert (row["done"], row["stray"], row["stray_files"]) == (1, 1, [str(copy)])
    assert main(["status", str(tmp_path)]) == 0
    assert f"st: stray {copy} (holds no row of the trial it is named for" in capsys.readouterr().out


# -- a column of the wrong type --------------------------------------------------------------------
WRONG = {"string": lambda c: pa.array([str(v) for v in c.to_pylist()], pa.string()),
         "int": lambda c: pa.array([7] * len(c), pa.int64()),
         "bool": lambda c: pa.array([True] * len(c), pa.bool_()),
         "float": lambda c: pa.array([0.5] * len(c), pa.float64())}


@CASES
@given(column=st.sampled_from(["status", "trial_id", "error", "test_acc", "epochs", "model", "lr", "started_at"]),
       kind=st.sampled_from(sorted(WRONG)))
def test_a_mistyped_trials_file_is_corrupt_by_path_and_crashes_nothing(fresh, capsys, column, kind):
    folder = fresh()
    store = Store(folder)
    good, bad = spec(0), spec(1)
    commit(store, good, 0.5)
    commit(store, bad, 0.6)
    path = folder / "st" / "trials" / f"{bad.trial_id}.parquet"
    table = pq.read_table(path)
    i = table.schema.get_field_index(column)
    new = WRONG[kind](table.column(i))
    old = table.schema.field(i).type
    numeric = (pa.types.is_integer, pa.types.is_floating)
    if new.type == old or (any(f(old) for f in numeric) and any(f(new.type) for f in numeric)):
        return  # not a wrong type for this column (integers and floats join as numbers)
    pq.write_table(table.set_column(i, pa.field(column, new.type), new), path)

    status = store.trial_status("st")
    assert status.corrupt == [str(path)] and status.done == {good.trial_id}
    with pytest.warns(UserWarning, match=str(path)):
        trials = store.read("st")
    assert list(trials["trial_id"]) == [good.trial_id]
    capsys.readouterr()
    assert main(["status", str(folder)]) == 0
    assert f"st: corrupt {path}" in capsys.readouterr().out


def test_a_mistyped_table_file_is_skipped_by_path_and_figures_draw(tmp_path, capsys):
    store = Store(tmp_path)
    for i in range(3):
        commit(store, spec(i), 0.5 + i / 10)
    path = tmp_path / "st" / "bn" / f"{spec(2).trial_id}.parquet"
    t = pq.read_table(path)
    i = t.schema.get_field_index("gamma")
    pq.write_table(t.set_column(i, pa.field("gamma", pa.string()), pa.array(["x"] * len(t))), path)
    with pytest.warns(UserWarning, match=str(path)):
        assert set(store.read("st", "bn")["trial_id"]) == {spec(0).trial_id, spec(1).trial_id}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["figures", str(tmp_path), "--out", str(tmp_path / "fig")]) == 0


# -- nightly's regression check cannot be turned off ---------------------------------------------
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "1e400"])
def test_nightly_tolerance_must_be_a_finite_non_negative_number(tmp_path, capsys, value):
    study = tmp_path / "s.py"
    study.write_text("from sweeper import Study\nstudy = Study(name='s', dataset='digits', axes={'seed': [0]})\n")
    assert main(["nightly", str(study), "--store", str(tmp_path / "store"), "--tolerance", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tolerance" in err[0] and not (tmp_path / "store").exists()


def test_run_nightly_refuses_a_nan_tolerance(tmp_path):
    from sweeper.errors import SweeperError
    from sweeper.nightly.run import run_nightly

    with pytest.raises(SweeperError, match="--tolerance"):
        run_nightly([str(tmp_path / "s.py")], str(tmp_path / "store"), tolerance=float("nan"))
