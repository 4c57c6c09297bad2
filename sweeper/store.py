"""The results store: Parquet only, one file per trial per table, committed atomically.

Layout (documented in the README; pandas, pyarrow and DuckDB read it directly):

    <store>/_sweeper.json                      schema version, written once
    <store>/<study>/trials/<trial_id>.parquet  one row per trial: its spec, status and results
    <store>/<study>/<table>/<trial_id>.parquet curves, bn, clamp, dead_relu, layers, ...
    <store>/<study>/figures/                   PNG and PDF figures redrawn from the tables
    <store>/<study>/_tune/                     Ray Tune's experiment state (checkpoints)
    <store>/<study>/tensorboard/, mlruns/, wandb/  what `--log` trackers write (sweeper.trackers)
    <store>/reports/                           nightly reports and their lock (sweeper.report)

A store is a local folder or an object store URI (`s3://BUCKET/PREFIX`, `gs://BUCKET/PREFIX`), read
and written through pyarrow's filesystems. For S3 the endpoint comes the standard AWS ways
(`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, or the URI's own `?endpoint_override=HOST:PORT&scheme=http`)
and so do the credentials (environment, `AWS_PROFILE`, the node's instance profile). The store's
`uri` spells out what was resolved (endpoint, scheme, region; never a secret), so a Ray worker that
rebuilds the store from it reaches the same place without the driver's environment.

Rules that keep results from being lost, doubled or half-read:
- a file is written aside under a hidden name (readers skip names starting with '.' or '_') and
  renamed into place; on object stores a single PUT is already atomic;
- a trial's `trials` row is written last: it is the commit marker. A trial whose row is missing is
  not done, and re-running it overwrites its other tables under the same names;
- names are the trial id, so two sweeps that run the same trial write the same file, never two;
- no file is ever read, modified and written back;
- a trial is done only while its row says so AND every table the row lists (`tables`) is present
  and readable: a damaged `bn` makes the trial run again, replacing its files (sweeper.storecheck);
- readers take a trial's rows only from the file named for it, once: a sync tool's copy or a row
  pasted elsewhere is ignored (and listed by `sweeper status`), and tables other than `trials`
  show only the rows of trials committed done;
- nothing is written into a store a newer sweeper wrote (its `_sweeper.json` names a higher
  version) or whose marker is not sweeper's.
"""
from __future__ import annotations

import json
import os
import re
import uuid
import warnings

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sweeper import segments as seglib, storecheck, storeread
from sweeper.storecheck import TrialStatus  # noqa: F401 (its home was here)
from sweeper.storeread import _Vanished
from sweeper.checks import check_text, user_path
from sweeper.errors import SweeperError
from sweeper.objectstore import (RetryingS3FileSystem, _rebuild_s3, checking_fs, endpoint, explain,  # noqa: F401
                                 first_line, open_object_store)

SCHEMA_VERSION = 1
TRIALS = "trials"
# Folders in a study that are not tables: figures, and what `--log` trackers write (sweeper.trackers)
NOT_TABLES = frozenset({"figures", "tensorboard", "mlruns", "wandb"})
_TABLE_NAME = re.compile(r"[a-z][a-z0-9_]*")  # a folder name, and a word of the `tables` column

# Columns every trials row has, whatever the experiment.
BASE_COLUMNS: dict[str, type] = {
    "trial_id": str,
    "study": str,
    "experiment": str,
    "status": str,  # "done", "failed", or "stopped" (ended early by a search's scheduler)
    "error": str,
}
RUN_COLUMNS: dict[str, type] = {
    "cpus": float,
    "gpus": float,
    "node_id": str,
    "hostname": str,
    "code_version": str,
    "started_at": str,
    "ended_at": str,
    "schema_version": int,
    # the tables the trial wrote, comma-joined and sorted ("bn,clamp,curves"): a done trial counts
    # as done only while every one of them is present and readable (see `trial_status`)
    "tables": str,
    # a trial whose results were copied from another study that trained it the same way
    # (sweeper.reuse): STUDY/TRIAL_ID of the trial that trained; empty for a trial trained here
    "reused_from": str,
}
_ARROW = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}


def trials_schema(spec_type, row_columns: dict[str, type]) -> pa.Schema:
    from sweeper.spec import arrow_type

    fields = {k: pa.field(k, _ARROW[t]) for k, t in BASE_COLUMNS.items()}
    fields.update({k: pa.field(k, arrow_type(t)) for k, t in spec_type.field_types().items()})
    # a result column that repeats a spec field (e.g. width_ratio) is the spec's column
    fields.update({k: pa.field(k, _ARROW[t]) for k, t in row_columns.items() if k not in fields})
    fields.update({k: pa.field(k, _ARROW[t]) for k, t in RUN_COLUMNS.items()})
    return pa.schema(list(fields.values()))


class Store:
    def __init__(self, uri: str | os.PathLike):
        uri = str(uri)
        check_text(uri, "--store", "has")  # a store path reaches crontab lines, reports, file names
        if "://" in uri and not uri.startswith("file://"):
            try:
                self.fs, self.root, uri = open_object_store(uri)
            except Exception as e:
                raise SweeperError(f"cannot open store {uri!r}: {first_line(e)}", "--store") from None
            self.scheme = uri.split("://", 1)[0].lower()
            self.local = False
        else:
            path = uri[len("file://") :] if uri.startswith("file://") else uri
            try:
                self.fs, self.root = pafs.LocalFileSystem(), str(user_path(path, "--store").resolve())
            except (OSError, RuntimeError) as e:  # a symlink loop (RuntimeError before Python 3.13)
                raise SweeperError(f"cannot resolve store path {path!r}: {first_line(e)}", "--store") from None
            if os.path.exists(self.root) and not os.path.isdir(self.root):
                raise SweeperError(f"{self.root} is a file, not a store folder", "--store")
            self.scheme = "file"
            self.local = True
        # What a Ray worker rebuilds the store from: for an object store, the URI with the endpoint,
        # scheme and region it resolved to (from the environment too), so workers need no setup.
        self.uri = uri if not self.local else self.root

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    # -- paths ---------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """A path on `self.fs` (for an object store: BUCKET/PREFIX/..., no scheme)."""
        return "/".join([self.root.rstrip("/"), *parts])

    def url(self, *parts: str) -> str:
        """A path as a person reads it: a local path, or s3://BUCKET/PREFIX/... (no options)."""
        path = self.path(*parts)
        return path if self.local else f"{self.scheme}://{path}"

    def tune_storage(self, study: str) -> dict[str, Any]:
        """`tune.RunConfig`'s storage arguments for a study's experiment state, `<store>/<study>/_tune`.
        An object store passes its filesystem and a path without scheme (a bare BUCKET/PREFIX
        without a filesystem fails in Tune: "URI has empty scheme")."""
        return {"storage_path": self.path(study, "_tune"), "storage_filesystem": None if self.local else self.fs}

    def table_dir(self, study: str, table: str) -> str:
        return self.path(study, table)

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    # -- set-up --------------------------------------------------------------------------------
    def ensure_writable(self, marker: bool = True) -> None:
        """Check that the store takes writes, or fail with one line before any work; with `marker`,
        create it and its version file. Without, write nothing: a local store that does not exist
        yet is only checked (its nearest existing folder is writable), and its folder and version
        file come with `write_marker`, just before the first trial, so that a sweep refused after
        this check (its data missing, its cluster too small) leaves no trace."""
        self.check_reachable()
        self.check_schema()
        fs = self.fs if self.local else checking_fs(self.fs)
        try:
            if self.local and not os.path.isdir(self.root):
                if marker:
                    fs.create_dir(self.root, recursive=True)
                else:
                    self._check_creatable()
                    return
            if marker:
                self.write_marker(fs)
            probe = self.path(f".probe-{uuid.uuid4().hex}")
            self._write_bytes(probe, b"", fs)
            fs.delete_file(probe)
        except SweeperError:
            raise
        except Exception as e:
            raise SweeperError(f"store {self.url()} is not writable ({type(e).__name__}: {first_line(e)})",
                               "--store") from None

    def _check_creatable(self) -> None:
        """A local store folder that does not exist yet could be created: its nearest existing
        ancestor is a folder this user may write into."""
        parent = Path(self.root)
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            what = "not a folder" if not parent.is_dir() else "not writable"
            raise SweeperError(f"store {self.url()} is not writable ({parent} is {what})", "--store")

    def check_reachable(self) -> None:
        """For an object store: the URI names a bucket, the endpoint answers, the bucket exists and
        the credentials open it; one line within seconds when not. Reads only, writes nothing."""
        if self.local:
            return
        bucket = self.root.split("/", 1)[0]
        if not bucket:
            raise SweeperError(f"{self.scheme}:// URI names no bucket: expected {self.scheme}://BUCKET/PREFIX",
                               "--store")
        try:
            info = checking_fs(self.fs).get_file_info(bucket)
        except Exception as e:
            raise SweeperError(explain(e, bucket, self.fs, self.scheme), "--store") from None
        if info.type == pafs.FileType.NotFound:
            raise SweeperError(f"bucket {bucket!r} does not exist at {endpoint(self.fs, self.scheme)}", "--store")

    def write_marker(self, fs: pafs.FileSystem | None = None) -> None:
        """The store's version file, written once (the store's first write, before any trial)."""
        self.check_schema()
        marker = self.path("_sweeper.json")
        if (fs or self.fs).get_file_info(marker).type == pafs.FileType.NotFound:
            self._write_bytes(marker, json.dumps({"schema_version": SCHEMA_VERSION}).encode(), fs)

    def schema_version(self) -> int:
        """The version the store's files follow (SCHEMA_VERSION for a store without a marker yet);
        a marker that is not sweeper's is refused by its path."""
        marker = self.path("_sweeper.json")
        try:
            with self.fs.open_input_stream(marker) as f:
                data = f.read()
        except (FileNotFoundError, NotADirectoryError):  # no marker yet
            return SCHEMA_VERSION
        except Exception as e:
            if self._store_failed(e):
                raise
            raise SweeperError(f"cannot read {self.url('_sweeper.json')}: {first_line(e)}", "--store") from None
        try:
            version = json.loads(data.decode())["schema_version"]
            if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                raise ValueError(f"schema_version {version!r}")
        except (ValueError, KeyError, TypeError) as e:
            raise SweeperError(f"{self.url('_sweeper.json')} is not a sweeper store marker ({first_line(e)}); "
                               'expected {"schema_version": N}: is this folder another program\'s?', "--store") from None
        return version

    def check_schema(self) -> None:
        """Refuse to write into a store of a newer schema (its readers would misread our files, and
        we theirs), or one whose marker is not sweeper's."""
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise SweeperError(f"store {self.url()} has schema version {version}, written by a newer sweeper; "
                               f"this one reads and writes version {SCHEMA_VERSION}: upgrade sweeper, or use "
                               "another store", "--store")

    # -- writing -------------------------------------------------------------------------------
    def _write_bytes(self, final: str, data: bytes, fs: pafs.FileSystem | None = None) -> None:
        parent = final.rsplit("/", 1)[0]
        if not self.local:  # objects need no parent folders: one PUT, atomic (retried, see S3_ATTEMPTS)
            with (fs or self.fs).open_output_stream(final) as f:
                f.write(data)
            return
        self.fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.{final.rsplit('/', 1)[1]}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)  # atomic on POSIX: readers see the old file or the new, never half

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write one file atomically (aside, then renamed; one PUT on object stores)."""
        self._write_bytes(path, data)

    def write_table(self, path: str, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self._write_bytes(path, sink.getvalue().to_pybytes())

    def commit_trial(self, study: str, spec, row: dict[str, Any], tables: dict[str, pd.DataFrame]) -> None:
        """Write a trial's tables, then its trials row (the commit marker)."""
        from sweeper.experiments import EXPERIMENTS

        trial_id = spec.trial_id
        for name, frame in tables.items():
            if name == TRIALS or not _TABLE_NAME.fullmatch(name):
                raise ValueError(f"an experiment cannot write a table named {name!r}")
            frame = frame.copy()
            frame.insert(0, "trial_id", trial_id)
            self.write_table(self.path(study, name, f"{trial_id}.parquet"), _to_arrow(frame))
        schema = trials_schema(type(spec), EXPERIMENTS[spec.experiment].columns)
        row = {**row, "schema_version": SCHEMA_VERSION, "tables": ",".join(sorted(tables))}
        unknown = set(row) - set(schema.names)
        if unknown:
            raise ValueError(f"trials row has undeclared columns: {sorted(unknown)}")
        table = pa.Table.from_pylist([{k: row.get(k) for k in schema.names}], schema=schema)
        self.write_table(self.path(study, TRIALS, f"{trial_id}.parquet"), table)

    # -- reading -------------------------------------------------------------------------------
    def studies(self) -> list[str]:
        if not self.exists(self.root):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.root))
        return sorted(
            i.base_name for i in infos
            if i.type == pafs.FileType.Directory and not i.base_name.startswith((".", "_"))
            and self.exists(self.path(i.base_name, TRIALS))
        )

    def tables(self, study: str) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(study), allow_not_found=True))
        return sorted(
            i.base_name for i in infos
            if i.type == pafs.FileType.Directory and not i.base_name.startswith((".", "_"))
            and i.base_name not in NOT_TABLES
        )

    def files(self, study: str, table: str) -> list[str]:
        """The trials' own files of a table (not the compacted parts: see `segments`)."""
        return [i.path for i in self.file_infos(study, table)]

    def file_infos(self, study: str, table: str, parts: bool = False) -> list[pafs.FileInfo]:
        """The own files of a table (with `parts`, the compacted parts instead), with size and
        modification time, in path order."""
        sel = pafs.FileSelector(self.table_dir(study, table), allow_not_found=True)
        return sorted(
            (i for i in self.fs.get_file_info(sel)
             if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
             and not i.base_name.startswith((".", "_")) and seglib.is_part(i.base_name) == parts),
            key=lambda i: i.path)

    def segments(self, study: str) -> seglib.Segments:
        """The study's committed compacted files (sweeper.segments). Read after listing own files."""
        return seglib.read_segments(self, study)

    def _store_failed(self, e: Exception) -> bool:
        """Whether a failed read is the object store failing (still down after its retries), not a
        damaged file (Parquet's own errors are ArrowInvalid). That must stop the command: calling
        the file corrupt would rerun a done trial, or let a lost trial's failed row replace it."""
        return not self.local and isinstance(e, OSError) and not isinstance(e, FileNotFoundError)

    def _footers(self, paths: list[str]) -> tuple[dict[str, pq.FileMetaData], list[str]]:
        """Each readable file's Parquet footer (schema, row count, column statistics); the paths of
        the unreadable ones (truncated, not Parquet) apart: their trials are rerun, never dropped."""
        metas, bad = {}, []
        for p in paths:
            try:
                with self.fs.open_input_file(p) as f:
                    metas[p] = pq.read_metadata(f)
            except FileNotFoundError:
                raise _Vanished(p) from None
            except Exception as e:
                if self._store_failed(e):
                    raise
                bad.append(p)
        return metas, bad

    def trial_status(self, study: str) -> TrialStatus:
        """What the store holds of a study's trials. A trial is done when the file that holds its
        row (its own `trials` file, else a compacted part: sweeper.segments) says done, that file's
        columns have their types, and every table the row lists (`tables`) is present and, on a
        local store, readable; a row written before `tables` existed is checked against the table
        files present for it (a missing one cannot be told from one never written). Anything less
        and the trial runs again."""
        return storeread.again(lambda: storeread.trial_status(self, study, trials_schema), self.url(study))

    def trial_row(self, study: str, trial_id: str) -> dict[str, Any] | None:
        """One trial's committed row, or None when it has none (or an unreadable one)."""
        path = self.path(study, TRIALS, f"{trial_id}.parquet")
        try:
            with self.fs.open_input_file(path) as f:
                rows = pq.read_table(f).to_pylist()
        except Exception as e:
            if self._store_failed(e):
                raise
            return None
        return next((r for r in rows if r.get("trial_id") == trial_id), None)

    def append_row(self, study: str, table: str, name: str, row: dict[str, Any]) -> None:
        """A one-row file of its own (no read-modify-write of a shared file)."""
        self.write_table(self.path(study, table, f"{name}.parquet"), pa.Table.from_pylist([row]))

    def read(self, study: str, table: str = TRIALS, columns: list[str] | None = None,
             categorical: list[str] = (), filters=None, trials=None) -> pd.DataFrame:
        """One table of one study as a DataFrame, each trial's rows once (from its own file, else
        from the compacted part that holds it: sweeper.segments). Files of older schema versions
        are read with the union of all columns (missing ones empty). Skipped, so that nothing is
        read half or twice: corrupt files (unreadable, or a column of the wrong type), with a
        warning that names them (their trials run again); rows outside the file named for their
        trial (a sync tool's copy; `sweeper status` lists these files); and in the tables other
        than `trials`, the rows of trials not committed done (killed before their `trials` row,
        or with another of their tables damaged). `columns` keeps those of them the table has
        (only they are read); `filters` (a pyarrow compute expression, or pyarrow's list of
        (column, op, value) tuples) selects rows inside the Parquet scan, with row-group
        statistics; `categorical` text columns come back as pandas categoricals, read as Parquet
        dictionaries (a `trial_id` repeated over 8 million `bn` rows then costs integer codes,
        not 8 million strings). `trials` (ids) keeps those trials' rows only, chosen by file: the
        own files of others are not opened, and the compacted parts say which trials they hold."""
        wanted = None if trials is None else set(trials)
        frame = storeread.again(lambda: storeread.read_frame(self, study, table, columns, categorical, filters,
                                                             trials_schema, wanted), self.url(study, table))
        return pd.DataFrame(columns=columns or []) if frame is None else frame

    def reduce(self, study: str, table: str, columns: list[str], fold, categorical: list[str] = (),
               filters=None, trials=None, batch_rows: int = 1 << 20):
        """`fold(batches)` over the rows `read` would return (the same files, each committed
        trial's rows once), given as Arrow record batches of `columns` one after another, so that a
        figure can summarise a table of 80 million rows without holding it (sweeper.analysis.reduce).
        When a compaction deletes a file mid-way, `fold` runs again on a fresh plan: it must start
        from nothing each time it is called."""
        wanted = None if trials is None else set(trials)
        return storeread.again(lambda: fold(storeread.batches(self, study, table, columns, categorical, filters,
                                                                trials_schema, wanted, batch_rows)),
                                     self.url(study, table))

    def reduce_digested(self, study: str, table: str, name: str, digest, fold, trials=None,
                        batch_rows: int = 1 << 20) -> tuple[Any, dict[str, pa.Table]]:
        """The digest `name` (a sweeper.digests.Digest) of every committed trial of `table`: the
        compacted trials' from the digest their segment stored, the others' by `fold(batches)` over
        their rows (`digest.columns`, as `reduce` gives them). Returns (`fold`'s result over the
        rows not digested, output -> the stored digests' rows of the other trials); one listing
        serves both, so that each trial is in exactly one of the two."""
        wanted = None if trials is None else set(trials)

        def plan(use):
            return storeread.plan_reads(self, study, table, list(digest.columns), list(digest.categorical), None,
                                        trials_schema, wanted, (name, digest.key) if use else None)

        def run():
            scans, given = plan(True)
            try:
                stored = storeread.read_digests(self, given)
            except _Vanished:  # a digest file gone (deleted by hand, or its segment rewritten
                scans, stored = plan(False)[0], {}  # since the listing): every row streamed instead
            return fold(b for scan in scans or () for b in scan.batches(batch_rows)), stored

        return storeread.again(run, self.url(study, table))

    def read_all(self, study: str) -> dict[str, pd.DataFrame]:
        return {t: self.read(study, t) for t in self.tables(study)}


def _to_arrow(frame: pd.DataFrame) -> pa.Table:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    # pandas' string dtype may map to large_string; keep one string type across every file.
    fields = [pa.field(f.name, pa.string()) if pa.types.is_large_string(f.type) else f for f in table.schema]
    return table.cast(pa.schema(fields).remove_metadata())


def load(store: str | os.PathLike, study: str | None = None, table: str = TRIALS, columns: list[str] | None = None,
         filters=None, categorical: list[str] = ()) -> pd.DataFrame:
    """A table as a DataFrame: one study's, or every study's concatenated when `study` is None.
    `columns` reads only those columns; `filters` only the rows it selects, inside the Parquet
    scan (row groups whose statistics rule them out are skipped): a pyarrow expression, e.g.
    `pyarrow.compute.field("layer_index") == 0`, or pyarrow's tuples, e.g.
    `[("trial_id", "in", ids), ("gamma", "<", 0.01)]`. Compacted and per-trial files alike.
    `categorical` text columns come back as pandas categoricals (`["trial_id"]` for the `bn` table:
    integer codes instead of one string per row)."""
    s = Store(store)
    if study is not None:
        return s.read(study, table, columns=columns, filters=filters, categorical=categorical)
    frames = [s.read(name, table, columns=columns, filters=filters, categorical=categorical) for name in s.studies()]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns or [])
