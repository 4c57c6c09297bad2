"""The results store: Parquet only, one file per trial per table, committed atomically.

Layout (documented in the README; pandas, pyarrow and DuckDB read it directly):

    <store>/_sweeper.json                      schema version, written once
    <store>/<study>/trials/<trial_id>.parquet  one row per trial: its spec, status and results
    <store>/<study>/<table>/<trial_id>.parquet curves, bn, clamp, dead_relu, layers, ...
    <store>/<study>/figures/                   PNG and PDF figures redrawn from the tables
    <store>/<study>/_tune/                     Ray Tune's experiment state (checkpoints)
    <store>/reports/                           nightly reports and their lock (sweeper.report)

Rules that keep results from being lost, doubled or half-read:
- a file is written aside under a hidden name (readers skip names starting with '.' or '_') and
  renamed into place; on object stores a single PUT is already atomic;
- a trial's `trials` row is written last: it is the commit marker. A trial whose row is missing is
  not done, and re-running it overwrites its other tables under the same names;
- names are the trial id, so two sweeps that run the same trial write the same file, never two;
- no file is ever read, modified and written back.
"""
from __future__ import annotations

import json
import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sweeper.errors import SweeperError

SCHEMA_VERSION = 1
TRIALS = "trials"

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


@dataclass
class TrialStatus:
    done: set[str]
    failed: dict[str, str]  # trial id -> error
    corrupt: list[str]  # paths of unreadable trials files (their trials run again)
    stopped: set[str] = None  # ended early by a search scheduler: complete as far as they went

    def __post_init__(self):
        self.stopped = self.stopped or set()


class Store:
    def __init__(self, uri: str | os.PathLike):
        uri = str(uri)
        if "://" in uri and not uri.startswith("file://"):
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(uri)
            except Exception as e:
                raise SweeperError(f"cannot open store {uri!r}: {e}", "--store") from None
            self.local = False
        else:
            path = uri[len("file://") :] if uri.startswith("file://") else uri
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())
            self.local = True
        self.uri = uri if not self.local else self.root

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    # -- paths ---------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def table_dir(self, study: str, table: str) -> str:
        return self.path(study, table)

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    # -- set-up --------------------------------------------------------------------------------
    def ensure_writable(self) -> None:
        """Create the store (and its version file) or fail with one line before any work."""
        try:
            self.fs.create_dir(self.root, recursive=True)
            marker = self.path("_sweeper.json")
            if not self.exists(marker):
                self._write_bytes(marker, json.dumps({"schema_version": SCHEMA_VERSION}).encode())
            probe = self.path(f".probe-{uuid.uuid4().hex}")
            self._write_bytes(probe, b"")
            self.fs.delete_file(probe)
        except SweeperError:
            raise
        except Exception as e:
            raise SweeperError(f"store {self.uri} is not writable ({type(e).__name__}: {e})", "--store") from None

    def schema_version(self) -> int:
        marker = self.path("_sweeper.json")
        if not self.exists(marker):
            return SCHEMA_VERSION
        with self.fs.open_input_stream(marker) as f:
            return int(json.loads(f.read().decode())["schema_version"])

    # -- writing -------------------------------------------------------------------------------
    def _write_bytes(self, final: str, data: bytes) -> None:
        parent = final.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        if not self.local:
            with self.fs.open_output_stream(final) as f:  # one PUT: atomic on object stores
                f.write(data)
            return
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
            if name == TRIALS:
                raise ValueError("an experiment cannot write the trials table directly")
            frame = frame.copy()
            frame.insert(0, "trial_id", trial_id)
            self.write_table(self.path(study, name, f"{trial_id}.parquet"), _to_arrow(frame))
        schema = trials_schema(type(spec), EXPERIMENTS[spec.experiment].columns)
        row = {**row, "schema_version": SCHEMA_VERSION}
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
            and i.base_name != "figures"
        )

    def files(self, study: str, table: str) -> list[str]:
        sel = pafs.FileSelector(self.table_dir(study, table), allow_not_found=True)
        return sorted(
            i.path for i in self.fs.get_file_info(sel)
            if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
            and not i.base_name.startswith((".", "_"))
        )

    def _readable(self, paths: list[str]) -> tuple[list[str], list[pa.Schema], list[str]]:
        good, schemas, bad = [], [], []
        for p in paths:
            try:
                with self.fs.open_input_file(p) as f:
                    schemas.append(pq.read_schema(f))
                good.append(p)
            except Exception:  # truncated or not Parquet: its trial is rerun, never silently dropped
                bad.append(p)
        return good, schemas, bad

    def trial_status(self, study: str) -> TrialStatus:
        done, failed, corrupt, stopped = set(), {}, [], set()
        for p in self.files(study, TRIALS):
            try:
                with self.fs.open_input_file(p) as f:
                    t = pq.read_table(f, columns=["trial_id", "status", "error"])
                for tid, status, error in zip(*(t.column(c).to_pylist() for c in ("trial_id", "status", "error"))):
                    if status == "done":
                        done.add(tid)
                    elif status == "stopped":
                        stopped.add(tid)
                    else:
                        failed[tid] = error or ""
            except Exception:
                corrupt.append(p)
        return TrialStatus(done, failed, corrupt, stopped)

    def trial_row(self, study: str, trial_id: str) -> dict[str, Any] | None:
        """One trial's committed row, or None when it has none (or an unreadable one)."""
        path = self.path(study, TRIALS, f"{trial_id}.parquet")
        try:
            with self.fs.open_input_file(path) as f:
                rows = pq.read_table(f).to_pylist()
        except Exception:
            return None
        return rows[0] if rows else None

    def append_row(self, study: str, table: str, name: str, row: dict[str, Any]) -> None:
        """A one-row file of its own (no read-modify-write of a shared file)."""
        self.write_table(self.path(study, table, f"{name}.parquet"), pa.Table.from_pylist([row]))

    def read(self, study: str, table: str = TRIALS, columns: list[str] | None = None,
             categorical: list[str] = ()) -> pd.DataFrame:
        """One table of one study as a DataFrame. Files of older schema versions are read with
        the union of all columns (missing ones empty); corrupt files are skipped with a warning
        that names them (their trials show up as missing in `sweeper status` and run again).
        `columns` keeps those of them the table has; `categorical` text columns come back as
        pandas categoricals, read as Parquet dictionaries (a `trial_id` repeated over 8 million
        `bn` rows then costs integer codes, not 8 million strings)."""
        paths = self.files(study, table)
        good, schemas, bad = self._readable(paths)
        for p in bad:
            warnings.warn(f"{p}: not a readable Parquet file; skipped (its trial will be rerun)")
        if not good:
            return pd.DataFrame(columns=columns or [])
        schema = pa.unify_schemas(schemas, promote_options="permissive")
        if columns is not None:
            columns = [c for c in columns if c in schema.names]
        as_dict = [c for c in categorical if c in schema.names and pa.types.is_string(schema.field(c).type)]
        for c in as_dict:
            schema = schema.set(schema.get_field_index(c), pa.field(c, pa.dictionary(pa.int32(), pa.string())))
        fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=as_dict))
        table = ds.dataset(good, schema=schema, format=fmt, filesystem=self.fs).to_table(columns=columns)
        # Column by column into pandas, freeing each Arrow column as it goes: the same frame as a
        # plain to_pandas(), with a lower peak and no copy into consolidated 2-D blocks (the `bn`
        # table of 1,000 trials is 8 million rows).
        return table.to_pandas(self_destruct=True, split_blocks=True)

    def read_all(self, study: str) -> dict[str, pd.DataFrame]:
        return {t: self.read(study, t) for t in self.tables(study)}


def _to_arrow(frame: pd.DataFrame) -> pa.Table:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    # pandas' string dtype may map to large_string; keep one string type across every file.
    fields = [pa.field(f.name, pa.string()) if pa.types.is_large_string(f.type) else f for f in table.schema]
    return table.cast(pa.schema(fields).remove_metadata())


def load(store: str | os.PathLike, study: str | None = None, table: str = TRIALS) -> pd.DataFrame:
    """A table as a DataFrame: one study's, or every study's concatenated when `study` is None."""
    s = Store(store)
    if study is not None:
        return s.read(study, table)
    frames = [s.read(name, table) for name in s.studies()]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
