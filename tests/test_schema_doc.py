"""docs/schema.md cannot rot: it names every column of every table that real trials of each
experiment write (an Optuna search's, in tests/test_search.py), and its DuckDB example runs, as written, on a real store."""
from __future__ import annotations

import re

import pandas as pd
import pytest

from conftest import REPO
from sweeper.experiments.construction.spec import ConstructionSpec
from sweeper.experiments.decomposed.spec import DecomposedSpec
from sweeper.experiments.train.spec import TrainSpec
from sweeper.store import Store
from sweeper.trial import TrialContext, execute

DOC = REPO / "docs" / "schema.md"
TINY = dict(dataset="digits", model="resnet-8-4", epochs=1, batch_size=64, augment="none", train_size=200,
            test_size=100)


def documented() -> dict[str, set[str]]:
    """Table -> the columns its section (`## \\`table\\``, with its `###` parts) lists in its tables."""
    out: dict[str, set[str]] = {}
    table = None
    for line in DOC.read_text().splitlines():
        if m := re.match(r"^## `(\w+)`", line):
            table = m.group(1)
            out.setdefault(table, set())
        elif line.startswith("## "):
            table = None
        elif table and (m := re.match(r"^\| `(\w+)` \|", line)):
            out[table].add(m.group(1))
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One real quick trial of each experiment, every measurement on."""
    store = Store(tmp_path_factory.mktemp("schema"))
    store.ensure_writable()
    specs = {
        "train": TrainSpec.from_values({**TINY, "measure": ["bn", "clamp", "dead_relu"]}),
        "construction": ConstructionSpec.from_values({"hidden": 4, "target_epochs": 1, "sgd_epochs": 1}),
        "decomposed": DecomposedSpec.from_values({"depth": 3, "width": 8, "batch": 4, "cosine_layers": "0,-1"}),
    }
    for name, spec in specs.items():
        row = execute(spec, TrialContext(study=name, store=store), threads=1)
        assert row["status"] == "done", row["error"]
    return store


def test_schema_doc_names_every_column_a_quick_run_writes(store):
    doc = documented()
    written: dict[str, set[str]] = {}
    for study in ("train", "construction", "decomposed"):
        for table in store.tables(study):
            written.setdefault(table, set()).update(store.read(study, table).columns)
    assert set(written) == {"trials", "curves", "bn", "clamp", "dead_relu", "construction_layers", "sgd_curve",
                            "layers", "cosine"}
    missing = {t: sorted(cols - doc.get(t, set())) for t, cols in written.items() if cols - doc.get(t, set())}
    assert missing == {}, f"docs/schema.md lacks these columns: {missing}"
    # and names no table that nothing writes (`search`: tests/test_search.py checks its columns on a real search)
    assert set(doc) - set(written) == {"search"}


def test_the_duckdb_example_runs_as_written(store, tmp_path):
    import duckdb  # in the test extra (pyproject.toml): a missing duckdb fails here, never skips
    sql = re.search(r"```sql\n(.*?)```", DOC.read_text(), re.S).group(1)
    assert "'store/quickstart/trials/*.parquet'" in sql
    # a small real store of the quickstart's shape: two depths, a failed trial, and one trial whose
    # row is in two files (a rerun, or a compaction's merged copy beside the trial's own file)
    s = Store(tmp_path / "store")
    s.ensure_writable()
    ctx = TrialContext(study="quickstart", store=s)
    rows = [execute(TrainSpec.from_values({**TINY, "depth": d, "trainable": t, "measure": []}), ctx, threads=1)
            for d in (8, 14) for t in ("bn", "output")]
    bad = TrainSpec.from_values({**TINY, "weight_init": "normal(std=1e200)", "measure": []})
    assert execute(bad, ctx, threads=1)["status"] == "failed"
    first = s.path("quickstart", "trials", f"{rows[0]['trial_id']}.parquet")
    s.write_bytes(s.path("quickstart", "trials", "compacted-copy-000.parquet"), open(first, "rb").read())
    assert len(pd.read_parquet(tmp_path / "store" / "quickstart" / "trials")) == 6  # a plain read doubles it

    got = duckdb.sql(sql.replace("store/quickstart", str(tmp_path / "store" / "quickstart"))).df()
    # the README shows the same query (as a Python string): what runs here is what it says
    readme = re.search(r'duckdb\.sql\("""\n(.*?)"""\)', (REPO / "README.md").read_text(), re.S).group(1)
    assert " ".join(readme.split()) == " ".join(sql.split()).rstrip(";").strip()
    done = pd.DataFrame(rows)
    expected = done.groupby("depth")["test_acc"].agg(["mean", "count"]).reset_index()
    assert got["depth"].tolist() == [8, 14] and got["trials"].tolist() == expected["count"].tolist() == [2, 2]
    assert got["mean_test_acc"].tolist() == pytest.approx(expected["mean"].tolist())
