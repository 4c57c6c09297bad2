"""`sweeper compact`: merge a study's per-trial Parquet files into a few large files per table.

Every finished trial writes one small file per table; a store that grows for months holds tens of
thousands, and every read lists and opens them all (on an object store, a round trip each). A
compaction writes the rows of the trials committed so far into one *segment* (layout and reading
rules in sweeper.segments), then deletes the files it merged. Safe at any moment:

1. `_compacted/<segment>.pending` names the process (host, pid) doing the work;
2. each table's rows, sorted by trial id, go into parts written aside (`.compacted-....tmp`) and
   renamed into place (an object store's upload appears whole when it completes);
3. the manifest `_compacted/<segment>.json` is written last, atomically: the commit point. Before it,
   readers ignore the parts; after it, a trial whose own file is gone is read from its part;
4. the own files merged are deleted, each only if it is still the file that was merged (size and
   modification time): a trial rerun meanwhile keeps its new file, which readers prefer;
5. the pending file goes.

A compaction killed anywhere leaves a store that reads every trial once: before 3, the parts are
garbage the next compaction deletes (its writer is dead, or an hour has passed); after 3, the
next compaction deletes the merged files still there. Two compactions at once both commit: a trial
in two segments is read from the newer one. A writer that commits new trials meanwhile loses
nothing: only trials committed before the compaction looked are merged, and only their files
deleted.

Only `trials` and the tables keyed by `trial_id` are compacted (`search` keeps its files). Which
trials: those committed done (with every table they wrote) and the failed and stopped ones' rows;
damaged, corrupt and stray files stay where `sweeper status` shows them.
"""
from __future__ import annotations

import heapq
import json
import os
import signal
import socket
import time
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sweeper import digests, procs
from sweeper import segments as seglib
from sweeper import storecheck, storeread
from sweeper.errors import SweeperError
from sweeper.store import TRIALS, Store

# Automatic compaction (end of `sweeper run` and of each nightly study) when a table holds more own
# files than this. Measured here: opening a small file costs about 2-4 ms locally and 3 requests on
# S3, so 256 files are about a second of every later read; merging them is a few seconds, once.
AUTO_FILES = 256
# Parts of a compaction whose process is not on this host are garbage once this old (a compaction of
# 10,000 ResNet-110 trials takes minutes, not an hour).
ABANDONED_SECONDS = 3600.0
# A compaction that would leave more live segments than this rewrites them all into one (as it does
# when a trial it merges is in a segment already: rerun since, or merged twice by compactions at once),
# so that a glob over a table's files reads each trial once and the parts stay few.
MAX_SEGMENTS = 8
FAULT_ENV = "SWEEPER_COMPACT_FAULT"  # tests: SIGKILL this process at the named step


def _fault(point: str) -> None:
    """Fault injection for the tests: die here, as a power cut or `kill -9` would."""
    if os.environ.get(FAULT_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Compacted:
    study: str
    segment: str | None = None
    trials: dict[str, int] = field(default_factory=dict)  # table -> trials merged
    files_before: int = 0  # the study's Parquet files (own files and parts) before
    files_after: int = 0
    deleted: int = 0  # own files deleted (merged now, or by an earlier compaction cut short)
    garbage: int = 0  # parts of compactions that died before committing, deleted
    seconds: float = 0.0

    def line(self) -> str:
        if not self.segment:
            what = "nothing to compact"
        else:
            what = "merged " + ", ".join(f"{t} {n}" for t, n in sorted(self.trials.items())) + \
                   f" trials into segment {self.segment}"
        extra = (f", finished {self.deleted} deletions" if not self.segment and self.deleted else "") + \
                (f", removed {self.garbage} abandoned parts" if self.garbage else "")
        return (f"{self.study}: {what}{extra}; files {self.files_before} -> {self.files_after} "
                f"({self.seconds:.1f} s)")


def _abandoned(store: Store, info: pafs.FileInfo) -> bool:
    """Whether the compaction a pending file names is dead: on this host, its process is gone;
    elsewhere, it is older than ABANDONED_SECONDS."""
    try:
        with store.fs.open_input_stream(info.path) as f:
            holder = json.loads(f.read().decode())
    except (OSError, ValueError):
        holder = {}
    if holder.get("host") == socket.gethostname() and "pid" in holder:
        return not procs.alive(int(holder["pid"]), holder.get("proc_start"))
    return time.time() - info.mtime.timestamp() > ABANDONED_SECONDS if info.mtime else True


def _study_files(store: Store, study: str, tables: list[str]) -> int:
    return sum(len(store.file_infos(study, t)) + len(store.file_infos(study, t, parts=True)) for t in tables)


def collect_garbage(store: Store, study: str, tables: list[str]) -> int:
    """Delete what dead compactions left: uncommitted parts (visible or aside) and their pending
    files; a committed one's pending file. Returns the parts deleted."""
    infos = seglib.listing(store, study)
    committed = {i.base_name[: -len(".json")] for i in infos if i.base_name.endswith(".json")}
    removed = 0
    for info in infos:
        if not info.base_name.endswith(".pending") or not _abandoned(store, info):
            continue
        segment = info.base_name[: -len(".pending")]
        if segment not in committed:
            _delete_digests(store, infos, segment)
            for table in tables:
                sel = pafs.FileSelector(store.table_dir(study, table), allow_not_found=True)
                for f in store.fs.get_file_info(sel):
                    if f.base_name.lstrip(".").startswith(f"{seglib.PREFIX}{segment}-"):
                        store.fs.delete_file(f.path)
                        removed += 1
        store.fs.delete_file(info.path)
    return removed


def _delete_digests(store: Store, infos: list[pafs.FileInfo], segment: str) -> None:
    """Delete a segment's digest files (sweeper.digests) among `infos` (its `_compacted` folder)."""
    doomed = [i.path for i in infos if i.base_name.startswith(f"{segment}.") and i.base_name.endswith(".parquet")]
    for path in doomed:
        try:
            store.fs.delete_file(path)
        except FileNotFoundError:
            pass


def _drop_replaced(store: Store, study: str, segs: seglib.Segments, tables: list[str]) -> None:
    """Delete the files of segments rewritten into a newer one: parts first, then the manifest (a
    reader that still finds the manifest ignores it: the newer one names it in `replaces`)."""
    for name in segs.replaced:
        for table in tables:
            sel = pafs.FileSelector(store.table_dir(study, table), allow_not_found=True)
            for f in store.fs.get_file_info(sel):
                if f.base_name.startswith(f"{seglib.PREFIX}{name}-"):
                    store.fs.delete_file(f.path)
        _delete_digests(store, seglib.listing(store, study), name)
        try:
            store.fs.delete_file(seglib.manifest_path(store, study, name))
        except FileNotFoundError:
            pass


def _delete_if_same(store: Store, path: str, stamp: str) -> bool:
    """Delete `path` if it is still the file stamped `stamp`; a rewrite (a trial rerun meanwhile)
    stays. Locally the file is first renamed aside, so that a rewrite landing between the check
    and the deletion is never the one deleted: it is put back."""
    if not store.local:
        info = store.fs.get_file_info(path)
        if info.type != pafs.FileType.File or seglib.stamp(info) != stamp:
            return False
        store.fs.delete_file(path)
        return True
    folder, name = path.rsplit("/", 1)
    aside = f"{folder}/.{name}.{uuid.uuid4().hex}.merged"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    st = os.stat(aside)
    if f"{st.st_size}:{st.st_mtime_ns}" == stamp:
        os.unlink(aside)
        return True
    try:
        os.link(aside, path)  # put the rewrite back (unless an even newer one is there already)
    except FileExistsError:
        pass
    os.unlink(aside)
    return False


def _conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    cols = [t.column(f.name).cast(f.type) if f.name in t.column_names else pa.nulls(len(t), f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


class _PartWriter:
    """A table's rows into parts of at most PART_ROWS rows, row groups of ROW_GROUP_ROWS."""

    def __init__(self, store: Store, study: str, table: str, segment: str, schema: pa.Schema):
        self.store, self.study, self.table, self.segment, self.schema = store, study, table, segment, schema
        self.parts: list[dict] = []
        self.written: list[tuple[str, str]] = []  # (where written, final path)
        self.writer = None
        self.buffer: list[pa.Table] = []
        self.buffered = 0

    def _open(self) -> None:
        name = seglib.part_name(self.segment, len(self.parts))
        final = self.store.path(self.study, self.table, name)
        where = f"{final.rsplit('/', 1)[0]}/.{name}.tmp" if self.store.local else final
        if self.store.local:
            self.store.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
        self.sink = self.store.fs.open_output_stream(where)
        self.writer = pq.ParquetWriter(self.sink, self.schema, write_statistics=True)
        self.written.append((where, final))
        self.parts.append({"file": name, "rows": 0, "trials": []})

    def add(self, trial_id: str, rows: pa.Table) -> None:
        if self.writer is None:
            self._open()
        self.buffer.append(rows)
        self.buffered += len(rows)
        self.parts[-1]["rows"] += len(rows)
        self.parts[-1]["trials"].append(trial_id)
        if self.buffered >= seglib.ROW_GROUP_ROWS:
            self._flush()
        if self.parts[-1]["rows"] >= seglib.PART_ROWS:
            self._close()

    def _flush(self) -> None:
        if self.buffer:
            self.writer.write_table(pa.concat_tables(self.buffer), row_group_size=seglib.ROW_GROUP_ROWS)
        self.buffer, self.buffered = [], 0

    def _close(self) -> None:
        if self.writer is not None:
            self._flush()
            self.writer.close()
            self.sink.close()
            self.writer = None

    def finish(self) -> list[dict]:
        self._close()
        return self.parts


def _own_rows(store: Store, table: str, sources: dict[str, pafs.FileInfo], tids: list[str]):
    """(trial id, its rows, its file's stamp) from each own file, in trial id order; a file gone
    meanwhile (another compaction merged it) is left out."""
    for tid in tids:
        info = sources[tid]
        try:
            with store.fs.open_input_file(info.path) as f:
                rows = pq.read_table(f)
        except FileNotFoundError:
            continue
        if storecheck.KEY in rows.column_names:
            rows = rows.filter(pc.equal(rows.column(storecheck.KEY).cast(pa.string()), tid))
        yield tid, (rows.slice(0, 1) if table == TRIALS else rows), seglib.stamp(info)


def _part_rows(store: Store, part: seglib.Part, keep: set[str]):
    """(trial id, its rows, None) of the trials `keep` of a part, in the part's (trial id) order:
    read row group by row group, cut where the trial id changes (a trial's rows are contiguous)."""
    keep_ids = pa.array(sorted(keep), pa.string())
    with store.fs.open_input_file(part.path) as f:
        pf = pq.ParquetFile(f)
        carry = None
        for g in range(pf.num_row_groups):
            t = pf.read_row_group(g)
            t = t.filter(pc.is_in(t.column(storecheck.KEY), keep_ids))
            if carry is not None:
                t = pa.concat_tables([carry, t])
            if not len(t):
                continue
            ids = t.column(storecheck.KEY).to_numpy()
            cuts = [0, *(np.flatnonzero(ids[1:] != ids[:-1]) + 1).tolist()]
            for lo, hi in zip(cuts[:-1], cuts[1:]):
                yield ids[lo], t.slice(lo, hi - lo), None
            carry = t.slice(cuts[-1])  # the last trial may go on in the next row group
        if carry is not None and len(carry):
            yield carry.column(storecheck.KEY)[0].as_py(), carry, None


def _merge_table(store: Store, study: str, table: str, sources: dict[str, pafs.FileInfo], old: list,
                 segment: str) -> tuple[_PartWriter | None, dict[str, str]]:
    """Write the rows of `sources` (trial id -> its own file) and of `old` ((part, trial ids to keep)
    of segments being rewritten) into parts, all in trial id order; returns the writer (its parts)
    and the stamps of the own files merged, or (None, {}) when there were no rows to merge."""
    metas = {}
    for tid, info in sources.items():
        try:
            with store.fs.open_input_file(info.path) as f:
                metas[tid] = pq.read_metadata(f)
        except FileNotFoundError:
            continue
        except Exception as e:  # noqa: BLE001 - damaged since the status looked: leave it to status
            if store._store_failed(e):
                raise
    schemas = [m.schema.to_arrow_schema() for m in metas.values()]
    for part, _ in old:
        with store.fs.open_input_file(part.path) as f:
            schemas.append(pq.read_schema(f))
    if not schemas:
        return None, {}
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    out = _PartWriter(store, study, table, segment, schema)
    stamps = {}
    streams = [_own_rows(store, table, sources, sorted(metas))] + [_part_rows(store, p, keep) for p, keep in old]
    for tid, rows, stamp in heapq.merge(*streams, key=lambda x: x[0]):  # row groups then bound their ids
        out.add(tid, _conform(rows, schema))
        if stamp is not None:
            stamps[tid] = stamp
    out.finish()
    return (out, stamps) if out.parts else (None, {})  # every own file gone meanwhile: nothing merged


def _write_digests(store: Store, study: str, table: str, segment: str, parts: list[str]) -> dict:
    """Each digest registered for `table` (sweeper.digests), computed over the segment's new parts
    and written beside its manifest; returns the manifest's entries. A digest that fails is left
    out with a warning: readers then stream those rows, as they do for trials not compacted."""
    entries = {}
    for name, digest in digests.registered(table).items():
        try:
            dataset = ds.dataset(parts, format=storeread.parquet_format(store, digest.categorical), filesystem=store.fs)
            columns = [c for c in digest.columns if c in dataset.schema.names]
            outputs = digest.compute(dataset.to_batches(columns=columns, batch_readahead=1, fragment_readahead=1))
            files = {}
            for output, rows in outputs.items():
                files[output] = digests.file_name(segment, table, name, output)
                store.write_table(store.path(study, seglib.FOLDER, files[output]), rows)
        except Exception as e:  # noqa: BLE001 - a digest saves later reads; the merge stands without it
            why = f"{type(e).__name__}: {e}"
            warnings.warn(f"{study}: digest {name} of {table} not written ({why}); readers stream those rows instead")
            entries[name] = {"key": digest.key, "failed": why}  # noted, so that the next compaction does not retry
            continue
        entries[name] = {"key": digest.key, "files": files}
    return entries


def compact_study(store: Store, study: str, min_files: int = 2, say: Callable[[str], None] = lambda s: None) -> Compacted:
    """Merge the study's committed per-trial files when some table holds at least `min_files`."""
    started = time.perf_counter()
    store.check_schema()
    result = Compacted(study)
    st = store.trial_status(study)  # lists every file, then reads the manifests (st.segments)
    segs = st.segments
    tables = [TRIALS, *sorted(set(storecheck.trial_tables(store, study)) | set(segs.tables()) - {TRIALS})]
    result.files_before = _study_files(store, study, tables)
    result.garbage = collect_garbage(store, study, tables)
    own = {t: {storecheck.stem(i.path): i for i in store.file_infos(study, t)} for t in tables}
    # An earlier compaction cut short after its commit: the files it merged, still unchanged.
    for table, files in own.items():
        for tid, info in list(files.items()):
            if segs.stamps.get(table, {}).get(tid) == seglib.stamp(info) and segs.has(table, tid):
                if _delete_if_same(store, info.path, seglib.stamp(info)):
                    result.deleted += 1
                files.pop(tid)
    final = st.done | set(st.failed) | st.stopped
    sources = {TRIALS: {t: i for t, i in own[TRIALS].items() if t in final}}
    for table in tables[1:]:
        sources[table] = {t: i for t, i in own[table].items() if t in st.done}
    again = any(segs.has(t, tid) for t, files in sources.items() for tid in files)  # rerun since merged
    # a segment without a digest registered now (written before it existed, or by an older version)
    # is rewritten once, with it: an old store gains the fast reads on its next `sweeper compact`
    stale = any(segs.undigested(t, name, d.key) for t in tables for name, d in digests.registered(t).items())
    rewrite = bool(segs.names) and (again or segs.doubled() or len(segs.names) >= MAX_SEGMENTS or stale)

    def finished(pending: str | None = None) -> Compacted:
        _drop_replaced(store, study, segs, tables)
        if pending:  # this run's own marker, last: the segment it names is committed or never will be
            store.fs.delete_file(pending)
        result.files_after = _study_files(store, study, tables)
        result.seconds = time.perf_counter() - started
        return result

    if not rewrite and max((len(s) for s in sources.values()), default=0) < max(min_files, 1):
        return finished()
    old = {t: [] for t in tables}
    if rewrite:  # every live segment into the new one, less the trials merged again from own files
        for table in tables:
            for part in segs.parts.get(table, []):
                keep = {tid for tid in part.trials if segs.holder[table][tid] is part and tid not in sources[table]}
                if keep:
                    old[table].append((part, keep))
    segment = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time_ns() % 10**9:09d}-{uuid.uuid4().hex[:6]}"
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "proc_start": procs.start_time(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    store.write_bytes(seglib.pending_path(store, study, segment), json.dumps(holder).encode())
    manifest = {"format": seglib.FORMAT, "segment": segment, "created": holder["started"], "tables": {},
                "replaces": segs.names if rewrite else []}
    writers, merged = [], {}
    for table in tables:
        if not sources[table] and not old[table]:
            continue
        say(f"{study}: merging {len(sources[table])} {table} files" + (" into a rewrite of the segments" if rewrite else ""))
        writer, stamps = _merge_table(store, study, table, sources[table], old[table], segment)
        if writer is None:  # its files gone meanwhile: merged by a compaction beside this one
            continue
        writers.append(writer)
        merged[table] = stamps
        carried = {t: v for t, v in segs.stamps.get(table, {}).items() if rewrite and t not in stamps}
        manifest["tables"][table] = {"parts": writer.parts, "stamps": {**carried, **stamps}}
        result.trials[table] = sum(len(p["trials"]) for p in writer.parts)
    if not writers:  # nothing left to merge (that compaction took it all): commit no empty segment
        return finished(seglib.pending_path(store, study, segment))
    _fault("written")
    for writer in writers:
        for where, final_path in writer.written:
            if where != final_path:
                os.replace(where, final_path)
    _fault("visible")
    for writer in writers:
        written = _write_digests(store, study, writer.table, segment, [final for _, final in writer.written])
        if written:
            manifest["tables"][writer.table]["digests"] = written
    _fault("digested")
    store.write_bytes(seglib.manifest_path(store, study, segment), json.dumps(manifest).encode())  # the commit
    result.segment = segment
    _fault("committed")
    doomed = [(sources[t][tid].path, s) for t, stamps in merged.items() for tid, s in stamps.items()]
    for i, (path, stamp) in enumerate(doomed):
        if i == len(doomed) // 2:
            _fault("deleting")
        result.deleted += _delete_if_same(store, path, stamp)
    if rewrite:
        segs.replaced = sorted(set(segs.replaced) | set(segs.names))
    return finished(seglib.pending_path(store, study, segment))


def own_files(store: Store, study: str) -> int:
    """The most own (not compacted) files any per-trial table of the study holds."""
    tables = [TRIALS, *storecheck.trial_tables(store, study)]
    return max((len(store.files(study, t)) for t in tables), default=0)


def maybe_compact(store: Store, study: str, say: Callable[[str], None] = print,
                  threshold: int = AUTO_FILES) -> Compacted | None:
    """Compact when a table holds more than `threshold` own files (end of a run or nightly study).
    A failure is reported, never raised: the sweep's results are safe either way."""
    try:
        if own_files(store, study) <= threshold:
            return None
        result = compact_study(store, study, say=say)
        say(f"compacted {result.line()}")
        return result
    except Exception as e:  # noqa: BLE001 - compaction is housekeeping; the next one finishes it
        say(f"warning: {study}: compaction failed ({type(e).__name__}: {e}); the store reads correctly, "
            "`sweeper compact` finishes it")
        return None


def cmd_compact(args) -> int:
    store = Store(args.store)
    store.check_reachable()
    have = store.studies()
    if not have:
        raise SweeperError("no study results here", args.store)
    for name in args.study or []:
        if name not in have:
            raise SweeperError(f"no study {name!r} in this store; it has: {', '.join(have)}", "--study")
    for name in args.study or have:
        print(compact_study(store, name, say=lambda s: None).line(), flush=True)
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("compact", help="merge each table's per-trial files into a few large ones")
    p.add_argument("store", help="a store folder or an s3://, gs:// URI")
    p.add_argument("--study", action="append", help="only this study (repeatable; default: every study)")
    p.set_defaults(fn=cmd_compact)
