"""The results store: Parquet only, one file per trial per table, committed atomically.

Layout (documented in the README; pandas, pyarrow and DuckDB read it directly):

    <store>/_sweeper.json                      schema version, written once
    <store>/<study>/trials/<trial_id>.parquet  one row per trial: its spec, status and results
    <store>/<study>/<table>/<trial_id>.parquet curves, bn, clamp, dead_relu, layers, ...
    <store>/<study>/figures/                   PNG and PDF figures redrawn from the tables
    <store>/<study>/_tune/                     Ray Tune's experiment state (checkpoints)
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
- no file is ever read, modified and written back.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import urllib.parse
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


# -- object stores -------------------------------------------------------------------------------
# Tries per S3 request, with the AWS SDK's default backoff (25 ms doubling: 11 tries wait about 50 s
# in all). A store that drops out for seconds (a restarted gateway, a network blip) then costs a
# pause, not a failed write. pyarrow's default, 3 tries within about a second, lost writes to a
# 5 s outage here. Errors that cannot heal (403, no such bucket) are not retried.
S3_ATTEMPTS = 11
# The up-front check (`check_reachable`) tries twice with short timeouts: a wrong endpoint or a
# dead network must answer in seconds, not after a minute of retries.
CHECK_ATTEMPTS, CHECK_SECONDS = 2, 5.0


class RetryingS3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3 filesystem, whose retry strategy survives pickling. pyarrow's own pickling
    drops it, and Ray Tune pickles the filesystem to every trial (which uploads its checkpoints
    with it): those uploads would fall back to 3 tries."""

    def __init__(self, attempts: int = S3_ATTEMPTS, **options):
        super().__init__(retry_strategy=pafs.AwsDefaultS3RetryStrategy(max_attempts=attempts), **options)
        self.attempts, self.options = attempts, options

    def __reduce__(self):
        return _rebuild_s3, (self.attempts, self.options)


def _rebuild_s3(attempts: int, options: dict) -> RetryingS3FileSystem:
    return RetryingS3FileSystem(attempts, **options)


def _options(fs: pafs.FileSystem) -> dict[str, Any]:
    """Every option of a pyarrow S3/GCS filesystem, as its pickling spells them."""
    if isinstance(fs, RetryingS3FileSystem):
        return dict(fs.options)
    return dict(fs.__reduce__()[1][0])


def _open_object_store(uri: str) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, root path without scheme, canonical URI) for an object store URI."""
    scheme = uri.split("://", 1)[0].lower()
    fs, root = pafs.FileSystem.from_uri(uri)  # reads the URI's options, AWS_ENDPOINT_URL(_S3), the region
    if scheme != "s3":
        return fs, root, uri
    options = _options(fs)
    endpoint = options.get("endpoint_override") or ""
    if "://" in endpoint:  # from AWS_ENDPOINT_URL: "http://host:port" carries its own scheme
        options["scheme"], options["endpoint_override"] = endpoint.split("://", 1)
    # One PUT per small object (pyarrow otherwise opens a multipart upload: three requests).
    options["allow_delayed_open"] = True
    fs = RetryingS3FileSystem(S3_ATTEMPTS, **options)
    parts = urllib.parse.urlsplit(uri)
    query = dict(urllib.parse.parse_qsl(parts.query))
    if options["endpoint_override"]:
        query.setdefault("endpoint_override", options["endpoint_override"])
        query.setdefault("scheme", options["scheme"])
    if options["region"]:
        query.setdefault("region", options["region"])
    encoded = urllib.parse.urlencode(query, safe=":/")
    canonical = f"{scheme}://{parts.netloc}{parts.path}" + (f"?{encoded}" if encoded else "")
    return fs, root, canonical


def _first_line(e: BaseException, limit: int = 300) -> str:
    """An error of the AWS/GCS SDK as one line of readable length."""
    text = re.sub(r"\s*\(Request ID: [^)]*\)", "", " ".join(str(e).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _credentials_hint() -> str:
    """Where AWS credentials would come from, for an error message (the SDK does the looking)."""
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return "AWS_ACCESS_KEY_ID is set: check it and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN)"
    if os.environ.get("AWS_PROFILE"):
        return f"AWS_PROFILE={os.environ['AWS_PROFILE']}: check that profile's keys"
    files = [os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
             os.environ.get("AWS_CONFIG_FILE", "~/.aws/config")]
    if any(Path(f).expanduser().is_file() for f in files):
        return "check the keys in ~/.aws (or set AWS_PROFILE)"
    return ("no AWS credentials found in the environment or ~/.aws: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run on a node with an instance profile")


class Store:
    def __init__(self, uri: str | os.PathLike):
        uri = str(uri)
        if "://" in uri and not uri.startswith("file://"):
            try:
                self.fs, self.root, uri = _open_object_store(uri)
            except Exception as e:
                raise SweeperError(f"cannot open store {uri!r}: {_first_line(e)}", "--store") from None
            self.scheme = uri.split("://", 1)[0].lower()
            self.local = False
        else:
            path = uri[len("file://") :] if uri.startswith("file://") else uri
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())
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
        """Create the store (and its version file) or fail with one line before any work.
        `marker=False` leaves the version file to `write_marker`, for a caller that may still give
        up without writing anything (a sweep waiting for its cluster's first node)."""
        self.check_reachable()
        fs = self.fs if self.local else self._checking_fs()
        try:
            if self.local:
                fs.create_dir(self.root, recursive=True)
            if marker:
                self.write_marker(fs)
            probe = self.path(f".probe-{uuid.uuid4().hex}")
            self._write_bytes(probe, b"", fs)
            fs.delete_file(probe)
        except SweeperError:
            raise
        except Exception as e:
            raise SweeperError(f"store {self.url()} is not writable ({type(e).__name__}: {_first_line(e)})",
                               "--store") from None

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
            info = self._checking_fs().get_file_info(bucket)
        except Exception as e:
            raise SweeperError(self._explain(e, bucket), "--store") from None
        if info.type == pafs.FileType.NotFound:
            raise SweeperError(f"bucket {bucket!r} does not exist at {self._endpoint()}", "--store")

    def _endpoint(self) -> str:
        options = _options(self.fs) if self.scheme in ("s3", "gs") else {}
        if options.get("endpoint_override"):
            return f"{options.get('scheme') or 'https'}://{options['endpoint_override']}"
        if self.scheme == "s3":
            return f"AWS S3 ({options.get('region') or 'default region'})"
        return "Google Cloud Storage" if self.scheme == "gs" else self.scheme

    def _explain(self, e: Exception, bucket: str) -> str:
        text = _first_line(e)
        if "AWS Error " in text:  # "When getting information for bucket 'b': AWS Error X during Y ..."
            text = "AWS error " + text.split("AWS Error ", 1)[1].replace(": No response body.", "")
        if "NETWORK_CONNECTION" in text or "curlCode" in text or "Could not connect" in text:
            detail = text.split("Details:", 1)[-1].strip() if "Details:" in text else text
            return f"cannot reach {self._endpoint()} ({detail})"
        denied = ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "HTTP status 403",
                  "InvalidAccessKeyId", "SignatureDoesNotMatch", "EXPIRED_TOKEN", "ExpiredToken")
        if self.scheme == "s3" and any(d in text for d in denied):
            return f"access to bucket {bucket!r} at {self._endpoint()} denied ({text}); {_credentials_hint()}"
        if self.scheme == "s3" and "HTTP status 500" in text and not os.environ.get("AWS_ACCESS_KEY_ID"):
            # an unsigned request (no credentials at all) makes some S3 servers fail instead of deny
            return f"bucket {bucket!r} at {self._endpoint()} refused the request ({text}); {_credentials_hint()}"
        return f"bucket {bucket!r} at {self._endpoint()}: {text}"

    def _checking_fs(self) -> pafs.FileSystem:
        """The store's filesystem with short timeouts and almost no retries, for the check."""
        if isinstance(self.fs, RetryingS3FileSystem):
            options = {**self.fs.options, "connect_timeout": CHECK_SECONDS, "request_timeout": CHECK_SECONDS}
            return RetryingS3FileSystem(CHECK_ATTEMPTS, **options)
        if isinstance(self.fs, pafs.GcsFileSystem):
            return pafs.GcsFileSystem(**{**_options(self.fs), "retry_time_limit": dt.timedelta(seconds=CHECK_SECONDS)})
        return self.fs

    def write_marker(self, fs: pafs.FileSystem | None = None) -> None:
        """The store's version file, written once."""
        marker = self.path("_sweeper.json")
        if (fs or self.fs).get_file_info(marker).type == pafs.FileType.NotFound:
            self._write_bytes(marker, json.dumps({"schema_version": SCHEMA_VERSION}).encode(), fs)

    def schema_version(self) -> int:
        marker = self.path("_sweeper.json")
        if not self.exists(marker):
            return SCHEMA_VERSION
        with self.fs.open_input_stream(marker) as f:
            return int(json.loads(f.read().decode())["schema_version"])

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

    def _store_failed(self, e: Exception) -> bool:
        """Whether a failed read is the object store failing (still down after its retries), not a
        damaged file (Parquet's own errors are ArrowInvalid). That must stop the command: calling
        the file corrupt would rerun a done trial, or let a lost trial's failed row replace it."""
        return not self.local and isinstance(e, OSError) and not isinstance(e, FileNotFoundError)

    def _readable(self, paths: list[str]) -> tuple[list[str], list[pa.Schema], list[str]]:
        good, schemas, bad = [], [], []
        for p in paths:
            try:
                with self.fs.open_input_file(p) as f:
                    schemas.append(pq.read_schema(f))
                good.append(p)
            except Exception as e:  # truncated or not Parquet: its trial is rerun, never silently dropped
                if self._store_failed(e):
                    raise
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
            except Exception as e:
                if self._store_failed(e):
                    raise
                corrupt.append(p)
        return TrialStatus(done, failed, corrupt, stopped)

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
