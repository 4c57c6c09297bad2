"""How sweeper.store reads a study: which file each trial's rows come from (its own file, else the
compacted part that holds it: sweeper.segments), what counts as done (sweeper.storecheck), and the
Parquet scans, with the caller's columns and row filters pushed down to pyarrow.

Every function here takes the Store; none imports sweeper.store (it imports this module).
"""
from __future__ import annotations

import time
import warnings

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from sweeper import frames, storecheck
from sweeper.errors import SweeperError
from sweeper.storecheck import KEY, TrialStatus

TRIALS = "trials"
#: How long a read keeps starting again while files vanish under it. A compaction deletes the files
#: it merged one by one after its commit, so a reader listing meanwhile can lose the race several
#: times in a row on a loaded machine (8 quick tries were not enough on 2 busy cores); the deletions
#: end, so waiting a little longer each time always gets a stable listing.
VANISH_SECONDS = 120.0


class _Vanished(Exception):
    """A file listed a moment ago is gone: a compaction merged it and deleted it. The read starts
    again from a new listing, which finds its rows in the compacted part."""


def again(fn, what: str):
    """`fn()`, started again while files vanish under it. A compaction deletes only files whose rows
    it has committed to a part, so a fresh listing finds every trial."""
    last, pause = None, 0.02
    deadline = time.monotonic() + VANISH_SECONDS
    while True:
        try:
            return fn()
        except _Vanished as e:
            last = e
        if time.monotonic() > deadline:
            break
        time.sleep(pause)
        pause = min(pause * 2, 1.0)
    raise SweeperError(f"{what}: files kept vanishing while being read (last {last}); is something "
                       "deleting them?", "--store")


def _open(store, path: str):
    try:
        return store.fs.open_input_file(path)
    except FileNotFoundError:
        raise _Vanished(path) from None


def trial_status(store, study: str, trials_schema) -> TrialStatus:
    """See Store.trial_status."""
    st = TrialStatus(set(), {}, [], set())
    schemas, columns = {}, {}
    own = store.files(study, TRIALS)
    for p in own:  # each file opened once (on an object store, requests)
        try:
            with _open(store, p) as f:
                pf = pq.ParquetFile(f)
                schemas[p] = pf.schema_arrow
                wanted = [c for c in ("trial_id", "status", "error", "tables") if c in schemas[p].names]
                columns[p] = pf.read(columns=wanted).to_pydict()
        except _Vanished:
            raise
        except Exception as e:
            if store._store_failed(e):
                raise
            st.corrupt.append(p)
    problems = storecheck.type_problems(schemas, storecheck.trials_types(trials_schema), storecheck.TEXT_COLUMNS)
    rows: dict[str, tuple[str, str, str | None]] = {}  # trial id -> (status, error, tables)
    for p, t in columns.items():
        if p in problems or not {"trial_id", "status"} <= set(t):
            st.corrupt.append(p)
            continue
        owner = storecheck.stem(p)
        mine = [i for i, tid in enumerate(t["trial_id"]) if tid == owner]
        if not mine:  # a copy under another name, or another trial's row: never counted
            st.stray.append(p)
            continue
        if len(t["trial_id"]) > 1:
            st.duplicate.append(p)
        i = mine[0]
        rows[owner] = (t["status"][i], (t["error"][i] if "error" in t else "") or "",
                       t["tables"][i] if "tables" in t else None)
    st.corrupt.sort()
    listing = storecheck.trial_tables(store, study)
    # Manifests after every listing: a trial whose own file was already gone is in one of them.
    segs = st.segments = store.segments(study)
    owned = {storecheck.stem(p) for p in own}
    for part, ids in segs.plan(TRIALS, owned):
        wanted = ["trial_id", "status", "error", "tables"]
        names = [c for c in wanted if c in pq.read_schema(_open(store, part.path)).names]
        scan = _scan(store, [part.path], None, names, _ids_filter(ids))
        t = scan.to_pydict()
        for i, tid in enumerate(t["trial_id"]):
            if tid not in rows:
                rows[tid] = (t["status"][i], (t["error"][i] if "error" in t else "") or "",
                             t["tables"][i] if "tables" in t else None)
    parts_ok: dict[str, bool] = {}
    for tid, (status, error, tables) in rows.items():
        if status == "stopped":
            st.stopped.add(tid)
        elif status != "done":
            st.failed[tid] = error
        elif storecheck.whole(store, study, tid, tables, listing, st, segs, parts_ok):
            st.done.add(tid)
    # table files of no trial the table `trials` knows: copies, or left by a trial killed before
    # its row (readers ignore both; a rerun replaces the latter)
    st.stray += sorted(p for files in listing.values() for owner, p in files.items() if owner not in rows)
    return st


#: How an object store's reads are grouped: column chunks closer than `hole_size_limit` are fetched
#: in one ranged GET (up to `range_size_limit`), pyarrow's sizing for a request that takes 50 ms to
#: its first byte and then moves 100 MiB/s (S3 from a cloud machine). pyarrow's default (8 KiB holes)
#: fetches γ and `trial_id`, eight columns apart, in two requests per row group of a compacted part.
NETWORK = pa.CacheOptions.from_network_metrics(time_to_first_byte_millis=50, transfer_bandwidth_mib_per_sec=100)


def parquet_format(store, dictionary_columns) -> ds.ParquetFileFormat:
    """How a scan of `store` reads Parquet: `dictionary_columns` as dictionaries; on an object store,
    nearby column chunks in one request (`NETWORK`), fetched as the scan reaches them (lazy: a
    whole file's chunks at once would hold hundreds of MB)."""
    options = {}
    if not store.local:
        cache = pa.CacheOptions(hole_size_limit=NETWORK.hole_size_limit, range_size_limit=NETWORK.range_size_limit,
                                lazy=True)
        options["default_fragment_scan_options"] = ds.ParquetFragmentScanOptions(pre_buffer=True, cache_options=cache)
    return ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=list(dictionary_columns)),
                                **options)


def _ids_filter(ids) -> pc.Expression | None:
    return None if ids is None else pc.field(KEY).isin(pa.array(sorted(ids), pa.string()))


def _and(a, b):
    if a is None:
        return b
    return a if b is None else (a & b)


def row_filter(filters) -> pc.Expression | None:
    """A pyarrow expression from `filters`: an expression already, or pyarrow's list of (column, op,
    value) tuples (a list of such lists: OR of ANDs), as `pandas.read_parquet(filters=...)` takes."""
    if filters is None or isinstance(filters, pc.Expression):
        return filters
    try:
        return pq.filters_to_expression(filters)
    except (TypeError, ValueError) as e:
        raise SweeperError(f"cannot use filters {filters!r}: {e}; expected a pyarrow expression or a list of "
                           "(column, op, value) tuples, op one of = == != < <= > >= in not in", "filters") from None


def _scan(store, paths, schema, columns, expr, fmt=None) -> pa.Table:
    try:
        return ds.dataset(paths, schema=schema, format=fmt or "parquet", filesystem=store.fs).to_table(
            columns=columns, filter=expr)
    except FileNotFoundError:
        raise _Vanished(", ".join(paths[:2])) from None


def read_frame(store, study: str, table: str, columns, categorical, filters, trials_schema,
               wanted: set[str] | None = None, batch_size: int = 1 << 18):
    """See Store.read: the DataFrame, or None when nothing is there. Numeric and categorical
    columns are counted, then filled batch by batch (sweeper.frames: the peak is the frame, not the
    frame and the Arrow table); others go through one Arrow table and `to_pandas`."""
    scans = plan_scans(store, study, table, columns, categorical, filters, trials_schema, wanted)
    if scans is None:
        return None
    schema = scans[0].projected()
    if not frames.streamable(schema):
        parts = [scan.table() for scan in scans]
        table_ = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        del parts
        # column by column, freeing each Arrow column as it goes: a lower peak than plain to_pandas()
        return table_.to_pandas(self_destruct=True, split_blocks=True)
    rows = sum(scan.count() for scan in scans)  # from the footers, unless a row filter must be read
    return frames.fill((b for scan in scans for b in scan.batches(batch_size)), schema, rows)


def batches(store, study: str, table: str, columns, categorical, filters, trials_schema,
            wanted: set[str] | None = None, batch_size: int = 1 << 20):
    """The rows Store.read returns, as Arrow record batches one after another (the same file choice:
    every committed trial's rows once), so that a caller can reduce a table of 80 million rows
    without holding it. A file that vanishes mid-way raises _Vanished: run the whole reduction
    again (Store.reduce does), never resume, or rows would count twice."""
    scans = plan_scans(store, study, table, columns, categorical, filters, trials_schema, wanted)
    for scan in scans or ():
        yield from scan.batches(batch_size)


class _Scan:
    """One scan of the plan: Parquet files with a schema, columns, a row filter, and for a file
    that holds rows of other trials, the owner whose rows alone count."""

    def __init__(self, store, paths, schema, columns, expr, fmt, owner=None, key=None, first=False, rows=None):
        self.store, self.paths, self.schema, self.rows = store, paths, schema, rows
        self.columns, self.expr, self.fmt = columns, expr, fmt
        self.owner, self.key, self.first = owner, key, first
        self._dataset = self._owned = None

    def projected(self) -> pa.Schema:
        """The schema of the rows this scan gives: its columns, in their order."""
        if self.columns is None:
            return self.schema
        return pa.schema([self.schema.field(c) for c in self.columns])

    def dataset(self) -> ds.Dataset:
        # one dataset object for the count and the scan: its fragments keep the footers they read
        if self._dataset is None:
            self._dataset = ds.dataset(self.paths, schema=self.schema, format=self.fmt, filesystem=self.store.fs)
        return self._dataset

    def count(self) -> int:
        """The rows `batches` will give: from the footers the plan read, or with a row filter, by
        scanning the columns the filter names."""
        if self.rows is not None:
            return self.rows
        if self.owner is not None:
            self._owned = self.table()
            return self._owned.num_rows
        try:
            return self.dataset().count_rows(filter=self.expr)
        except FileNotFoundError:
            raise _Vanished(", ".join(self.paths[:2])) from None

    def table(self) -> pa.Table:
        if self._owned is not None:
            return self._owned
        if self.owner is None:
            return _scan(self.store, self.paths, self.schema, self.columns, self.expr, self.fmt)
        names = None if self.columns is None else list(dict.fromkeys([*self.columns, self.key]))
        part = _scan(self.store, self.paths, self.schema, names, self.expr, self.fmt)
        part = part.filter(pc.equal(part.column(self.key).cast(pa.string()), self.owner))
        part = part.slice(0, 1) if self.first else part
        return part.select(self.columns) if self.columns is not None else part

    def batches(self, batch_size: int):
        if self.owner is not None:  # rare and small: one trial's file
            yield from self.table().to_batches(batch_size)
            return
        try:
            dataset = self.dataset()
            # little read-ahead: pyarrow's default (16 batches, 4 files) holds ~1 GB of a wide `bn` scan
            for batch in dataset.to_batches(columns=self.columns, filter=self.expr, batch_size=batch_size,
                                            batch_readahead=1, fragment_readahead=1):
                yield batch
        except FileNotFoundError:
            raise _Vanished(", ".join(self.paths[:2])) from None


def read_digests(store, given: list[tuple[dict[str, str], set[str] | None]]) -> dict[str, pa.Table]:
    """Output -> the rows of the trials `plan_reads` took from stored digests, every segment's."""
    parts: dict[str, list[pa.Table]] = {}
    for files, ids in given:
        for output, path in files.items():
            parts.setdefault(output, []).append(_scan(store, [path], None, None, _ids_filter(ids)))
    return {output: pa.concat_tables(tables, promote_options="permissive") for output, tables in parts.items()}


def _digested(segs, table: str, plan: list, done: set[str], digest: tuple[str, str]) -> tuple[list, list]:
    """`plan` less the parts whose segment holds `digest` (name, key); and for each such segment,
    its digest files and the committed trial ids to take from them (None: all the segment holds)."""
    rest, taken = [], {}
    for part, ids in plan:
        files = segs.digest(table, part.segment, *digest)
        if files is None:
            rest.append((part, ids))
            continue
        entry = taken.setdefault(part.segment, (files, set()))
        entry[1].update((part.trials if ids is None else ids) & done)
    given = []
    for segment, (files, ids) in taken.items():
        held = set().union(*(p.trials for p in segs.parts[table] if p.segment == segment))
        given.append((files, None if ids == held else ids))
    return rest, given


def plan_scans(store, study: str, table: str, columns, categorical, filters, trials_schema,
               wanted: set[str] | None = None) -> list[_Scan] | None:
    """The scans that read each committed trial's rows of `table` once (see `read`); None when
    nothing is there."""
    return plan_reads(store, study, table, columns, categorical, filters, trials_schema, wanted)[0]


def plan_reads(store, study: str, table: str, columns, categorical, filters, trials_schema,
         wanted: set[str] | None = None, digest: tuple[str, str] | None = None
         ) -> tuple[list[_Scan] | None, list[tuple[dict[str, str], set[str] | None]]]:
    """`plan_scans`, and with `digest` (name, key), the trials whose segment holds that digest
    (sweeper.digests) left out of the scans and given apart: (its files, the trial ids to take
    from them, None for all of the segment's)."""
    expr = row_filter(filters)
    own = store.files(study, table)
    listed = {storecheck.stem(p) for p in own}
    if wanted is not None:
        own = [p for p in own if storecheck.stem(p) in wanted]
    metas, bad = store._footers(own)
    trials = table == TRIALS
    committed = None
    if trials:
        segs = store.segments(study)  # after the listing (see sweeper.segments)
    else:
        st = trial_status(store, study, trials_schema)  # lists again, then reads the manifests
        segs = st.segments
    plan = segs.plan(table, listed, wanted)
    given = []
    if digest is not None and not trials and expr is None:  # a digested segment's trials: not scanned
        plan, given = _digested(segs, table, plan, st.done, digest)
    part_metas = {}
    for part, _ in plan:
        with _open(store, part.path) as f:
            part_metas[part.path] = pq.read_metadata(f)
    schemas = {p: m.schema.to_arrow_schema() for p, m in {**metas, **part_metas}.items()}
    problems = storecheck.type_problems(schemas, storecheck.trials_types(trials_schema) if trials else None,
                                        storecheck.TEXT_COLUMNS if trials else (KEY,))
    for p in bad:
        warnings.warn(f"{p}: not a readable Parquet file; skipped (its trial will be rerun)")
    for p, why in problems.items():
        warnings.warn(f"{p}: {why}; skipped as corrupt (its trial will be rerun)")
    good = [p for p in metas if p not in problems]
    key = storecheck.key_column(table, {n for p in schemas for n in schemas[p].names})
    if key == KEY and not trials:
        committed = st.done
    whole, filtered, partial = [], [], []
    for p in good:
        owner = storecheck.stem(p)
        if committed is not None and owner not in committed:
            continue
        verdict = storecheck.own_rows(metas[p], key, owner) if key in schemas[p].names else "all"
        if verdict == "all" and not (trials and metas[p].num_rows > 1):
            whole.append(p)
        elif verdict != "none":
            filtered.append(p)
    for part, ids in plan:
        if part.path in problems:
            continue
        if committed is not None and (ids is not None or not part.trials <= committed):
            keep = (ids if ids is not None else part.trials) & committed
            ids = None if keep == part.trials else keep
        if ids is None:
            whole.append(part.path)
        elif ids:
            partial.append((part.path, ids))
    if not whole and not filtered and not partial:
        return None, given
    used = whole + filtered + [p for p, _ in partial]
    schema = pa.unify_schemas([schemas[p] for p in used], promote_options="permissive")
    if columns is not None:
        columns = [c for c in columns if c in schema.names]
    as_dict = [c for c in categorical if c in schema.names and pa.types.is_string(schema.field(c).type)]
    for c in as_dict:
        schema = schema.set(schema.get_field_index(c), pa.field(c, pa.dictionary(pa.int32(), pa.string())))
    fmt = parquet_format(store, as_dict)
    footers = {**metas, **part_metas}
    rows = sum(footers[p].num_rows for p in whole) if expr is None else None
    scans = [_Scan(store, whole, schema, columns, expr, fmt, rows=rows)] if whole else []
    for path, ids in partial:  # a part some of whose trials are read elsewhere (rerun since) or not done
        scans.append(_Scan(store, [path], schema, columns, _and(expr, _ids_filter(ids)), fmt))
    for p in filtered:  # rare: a file holding rows of other trials, or its own row twice
        scans.append(_Scan(store, [p], schema, columns, expr, fmt, owner=storecheck.stem(p), key=key, first=trials))
    return scans, given
