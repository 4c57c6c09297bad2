"""What a study's files say about its trials, judged from their Parquet footers: whose rows a file
holds, and whether its columns have the types the table's other files (or the trials schema) give
them. sweeper.store decides with these which files a reader takes and which trials are done.

The rules, and why:
- a trial's rows live in the file named for it, `<table>/<trial_id>.parquet`, and only rows that
  carry that id count. A sync tool's "conflicted copy" (`abc (1).parquet`, `abc.sync-conflict-…`),
  a file copied under another trial's name, or a row pasted into another file would otherwise be
  read twice (a mean accuracy moved 0.663 -> 0.740 in the red-team's store). Such files are
  *stray*; a file holding its own trial's row more than once is *duplicate* and read once;
- a column whose type disagrees with the table's (a trials file whose `test_acc` is text) makes the
  whole table unreadable to pandas: the file is corrupt, by its path, and its trial runs again.
"""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

@dataclass
class TrialStatus:
    done: set[str]  # committed done, with every table it wrote present and readable
    failed: dict[str, str]  # trial id -> error
    corrupt: list[str]  # paths of unreadable (or mistyped) trials files: their trials run again
    stopped: set[str] = None  # ended early by a search scheduler: complete as far as they went
    # done rows whose tables are missing or unreadable: trial id -> those files' paths (it runs again)
    damaged: dict[str, list[str]] = field(default_factory=dict)
    stray: list[str] = field(default_factory=list)  # files holding no row of their own trial (ignored)
    duplicate: list[str] = field(default_factory=list)  # files holding their trial's row twice (read once)

    segments: Any = None  # the compacted files read with it (sweeper.segments)

    def __post_init__(self):
        self.stopped = self.stopped or set()


KEY = "trial_id"
# The columns every trials row has as text: a trials file with another type there is corrupt.
TEXT_COLUMNS = ("trial_id", "study", "experiment", "status", "error", "tables")


def stem(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name[: -len(".parquet")] if name.endswith(".parquet") else name


def key_column(table: str, names: Iterable[str]) -> str | None:
    """The column that names a row's owner: `trial_id` for per-trial tables, `<table>_id` for a
    table of one-row files keyed otherwise (`search` files are named by their `search_id`)."""
    names = set(names)
    if KEY in names:
        return KEY
    return f"{table}_id" if f"{table}_id" in names else None


def own_rows(meta: pq.FileMetaData, key: str, owner: str) -> str:
    """Whether the rows of a file all carry `owner` in column `key`, from its footer's statistics:
    "all", "none", or "mixed" (some do), or "unknown" when the footer keeps no statistics (then the
    caller reads the column)."""
    try:
        index = meta.schema.to_arrow_schema().get_field_index(key)
    except Exception:  # noqa: BLE001 - a schema pyarrow cannot map: read the column instead
        return "unknown"
    if index < 0:
        return "none"
    if meta.num_rows == 0:
        return "all"
    lows, highs = [], []
    for g in range(meta.num_row_groups):
        column = meta.row_group(g).column(index)
        stats = column.statistics
        if stats is None or not stats.has_min_max or stats.null_count:
            return "unknown"
        lows.append(stats.min)
        highs.append(stats.max)
    lows = [v.decode() if isinstance(v, bytes) else v for v in lows]
    highs = [v.decode() if isinstance(v, bytes) else v for v in highs]
    if all(lo == hi == owner for lo, hi in zip(lows, highs)):
        return "all"
    if all(not (lo <= owner <= hi) for lo, hi in zip(lows, highs)):
        return "none"
    return "mixed"


def _kind(t: pa.DataType) -> str:
    """Types that unify into one column (null joins anything; integers widen to floats; a
    dictionary of text is text)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_null(t):
        return "null"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return "number"
    if pa.types.is_boolean(t):
        return "bool"
    return str(t)


def type_problems(schemas: dict[str, pa.Schema], expected: dict[str, pa.DataType] | None = None,
                  text: Iterable[str] = (KEY,)) -> dict[str, str]:
    """Files whose columns cannot join the table's: path -> why. A column's type is the one
    `expected` gives, else the one most of the table's files have (ties: the first file's, in path
    order); a file that disagrees is the odd one out. Columns in `text` must be text."""
    expected = dict(expected or {})
    votes: dict[str, Counter] = {}
    for path in sorted(schemas):
        for field in schemas[path]:
            kind = _kind(field.type)
            if kind != "null":
                votes.setdefault(field.name, Counter())[kind] += 1
    want = {name: _kind(t) for name, t in expected.items()}
    for name, counter in votes.items():
        want.setdefault(name, counter.most_common(1)[0][0])
    for name in text:
        want[name] = "text"
    problems = {}
    for path in sorted(schemas):
        for field in schemas[path]:
            kind = _kind(field.type)
            if kind != "null" and want.get(field.name, kind) != kind:
                problems[path] = (f"column {field.name!r} is {field.type}, where the table's is "
                                  f"{want[field.name]}")
                break
    return problems


# -- a study's trials, judged through the store (`store` is a sweeper.store.Store) ---------------------
def trial_tables(store, study: str) -> dict[str, dict[str, str]]:
    """The study's per-trial tables (those keyed by `trial_id`; not `search`): table -> the
    own files by the trial they are named for (compacted parts apart: sweeper.segments)."""
    out = {}
    for table in store.tables(study):
        files = {stem(p): p for p in store.files(study, table)}
        if table == "trials":
            continue
        metas, _ = store._footers(sorted(files.values())[:3])  # unreadable ones prove nothing
        if all(key_column(table, m.schema.names) == KEY for m in metas.values()):
            out[table] = files
    return out


def whole(store, study: str, tid: str, tables: str | None, listing: dict[str, dict[str, str]], st,
          segs=None, parts_ok: dict[str, bool] | None = None) -> bool:
    """Whether every table a done trial wrote (`tables`; for a row from before that column, the
    files present for it) is there: its own file, present and, on a local store (where a write can
    be cut short or a file damaged), readable with the trial's own rows; or, without an own file,
    a compacted part (`segs`, sweeper.segments) that holds it, readable (checked once per part,
    `parts_ok` caches). Objects are whole once their single PUT lands. Records what is wrong in
    `st` (a TrialStatus)."""
    names = ([n for n in tables.split(",") if n] if tables is not None
             else [t for t, files in listing.items() if tid in files]
             + [t for t in (segs.tables() if segs else []) if segs.has(t, tid) and tid not in listing.get(t, {})])
    damaged = []
    for name in names:
        path = listing.get(name, {}).get(tid)
        if path is None and segs is not None and segs.has(name, tid):
            part = segs.holder[name][tid].path
            if store.local and parts_ok is not None:
                if part not in parts_ok:
                    parts_ok[part] = bool(store._footers([part])[0])
                if not parts_ok[part]:
                    damaged.append(part)
            continue
        if path is None or not store.local:
            damaged += [] if path else [store.path(study, name, f"{tid}.parquet")]
            continue
        metas, _ = store._footers([path])
        verdict = own_rows(metas[path], KEY, tid) if metas else "unreadable"
        if verdict in ("unreadable", "none"):  # "none": the file holds another trial's rows
            damaged.append(path)
        elif verdict == "mixed":
            st.duplicate.append(path)
    if damaged:
        st.damaged[tid] = damaged
    return not damaged


@functools.lru_cache(maxsize=1)
def trials_types(trials_schema) -> dict[str, pa.DataType]:
    """The declared type of every trials column, over all experiment kinds (a name two kinds type
    differently is left to the majority of the files); `trials_schema` is the store's."""
    from sweeper.experiments import EXPERIMENTS

    types: dict[str, pa.DataType] = {}
    clash = set()
    for name in EXPERIMENTS:
        kind = EXPERIMENTS[name]
        for f in trials_schema(kind.spec_type, kind.columns):
            if f.name in types and types[f.name] != f.type:
                clash.add(f.name)
            types.setdefault(f.name, f.type)
    return {k: v for k, v in types.items() if k not in clash}
