"""Datasets under an object-store prefix (`s3://`, `gs://`): each node copies what a trial reads
once to its own disk, and trials read it there.

Workers of a cluster share no disk, and CIFAR's pickled batches or ImageNet's JPEG folders are
read many times per trial: streaming them from S3 on every read would be slow and costly. So the
first trial on a node that needs a dataset copies the dataset's folders from the prefix into a
cache on that node; every later trial on the node (another process, another Ray actor) finds the
copy and starts at once.

    <cache>/<sha256 of the URI>/            $SWEEPER_CACHE/data/..., default ~/.cache/sweeper/data/...
        source.txt                          the URI (credentials removed), for whoever looks here
        copies.jsonl                        one line per completed copy: what, size, seconds, host
        <unit>/                             one complete copy: the prefix's layout, mirrored
            .sweeper-complete.json          its completion marker, written before the rename
            cifar-10-batches-py/...
        .lock-<unit>                        held while copying (filelock: concurrent trials wait)
        .partial-<unit>-<random>/           a copy in progress, or one a killed process left

Rules that make a copy count only when complete: the copy goes into a scratch folder, its marker
is written last inside it, and the folder is renamed into place (one atomic step); a folder in
place without the marker is redone; whoever holds the lock removes the scratch folders a killed
copier left. The driver never copies: `check` looks up the layout with a few metadata requests
before any trial starts, so a wrong prefix is one clear line, not a failed trial per node.

Endpoints and credentials follow the S3 store's conventions: pyarrow builds the filesystem from
the URI (`s3://bucket/prefix?endpoint_override=HOST:PORT&scheme=http` for a non-AWS endpoint) and
reads credentials from the environment (AWS_* variables, instance roles; Google's defaults).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit, urlunsplit

from sweeper.checks import user_path
from sweeper.errors import SweeperError

SCHEMES = ("s3", "gs", "gcs")
CACHE_ENV = "SWEEPER_CACHE"
MARKER = ".sweeper-complete.json"
LOG = "copies.jsonl"

# A layout: the paths a dataset reads under its root, relative to it; a path ending in "/" is a
# folder (copied whole), any other a file. A dataset may accept several layouts (alternatives).
Layout = Sequence[str]


def is_remote(root: str | os.PathLike | None) -> bool:
    return root is not None and urlsplit(str(root)).scheme in SCHEMES


def shown(uri: str) -> str:
    """The URI as messages and logs show it: without a user:secret@ part (pyarrow accepts keys
    there; they must never reach a log or an error line)."""
    parts = urlsplit(uri)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=host))


def _open(uri: str):
    """(filesystem, path of the prefix in it)."""
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except Exception as e:  # unknown scheme, bad query option, no GCS support in this pyarrow
        raise SweeperError(f"{shown(uri)}: cannot open it ({_first_line(e)})", "data_root") from None
    return fs, path.rstrip("/")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def missing(uri: str, layout: Layout) -> list[str]:
    """The layout's paths the prefix lacks (a few metadata requests; nothing is read)."""
    import pyarrow.fs as pafs

    fs, base = _open(uri)
    try:
        infos = fs.get_file_info([f"{base}/{p.rstrip('/')}" for p in layout])
    except Exception as e:  # no credentials, endpoint unreachable, no such bucket, access denied
        raise SweeperError(f"{shown(uri)}: cannot read it ({_first_line(e)})", "data_root") from None
    want = {True: pafs.FileType.Directory, False: pafs.FileType.File}
    return [p for p, info in zip(layout, infos) if info.type != want[p.endswith("/")]]


def check(uri: str, layouts: Sequence[Layout], what: str) -> Layout:
    """The first layout the prefix holds; else one line naming the URI and what it lacks."""
    gaps = [missing(uri, layout) for layout in layouts]
    for layout, gap in zip(layouts, gaps):
        if not gap:
            return layout
    alternatives = "".join(f" (nor {', '.join(layout)})" for layout in layouts[1:])
    raise SweeperError(f"{shown(uri)} holds no {what}: it lacks {', '.join(_brief(layouts[0], gaps[0]))}"
                       f"{alternatives}", "data_root")


def _brief(layout: Layout, gap: list[str]) -> list[str]:
    """The missing paths, a folder named once when nothing of the layout under it is there."""
    out: list[str] = []
    for p in gap:
        top = p.split("/")[0] + "/"
        whole = "/" in p.rstrip("/") and all(q in gap for q in layout if q.startswith(top))
        item = top if whole else p
        if item not in out:
            out.append(item)
    return out


def cache_root() -> Path:
    base = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sweeper"
    return user_path(base, CACHE_ENV) / "data"


def cache_dir(uri: str) -> Path:
    """This node's folder for copies from `uri` (one per distinct URI, endpoint included)."""
    return cache_root() / hashlib.sha256(uri.encode()).hexdigest()[:16]


def unit_name(layout: Layout) -> str:
    """A readable folder name for one layout's copy, unique per layout."""
    tops = sorted({p.strip("/").split("/")[0] for p in layout})
    digest = hashlib.sha256("\n".join(layout).encode()).hexdigest()[:8]
    return f"{'+'.join(tops)[:60]}-{digest}"


def fetch(uri: str, layouts: Sequence[Layout], what: str) -> Path:
    """A local folder holding the prefix's copy of the first layout it has: copied by the first
    caller on this node, found by every later one (other processes wait on the lock meanwhile)."""
    from filelock import FileLock

    # Fast path, no lock and no request: a complete copy of any accepted layout is here.
    cache = cache_dir(uri)
    for layout in layouts:
        if (cache / unit_name(layout) / MARKER).is_file():
            return cache / unit_name(layout)
    layout = check(uri, layouts, what)
    unit = unit_name(layout)
    target = cache / unit
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / f".lock-{unit}")):
        if (target / MARKER).is_file():  # another process copied it while this one waited
            return target
        for leftover in cache.glob(f".partial-{unit}-*"):  # a killed copier's scratch folder
            shutil.rmtree(leftover, ignore_errors=True)
        if target.exists():  # in place without its marker: never trusted, copied again
            shutil.rmtree(target)
        (cache / "source.txt").write_text(shown(uri) + "\n")
        _copy(uri, layout, cache, unit)
    return target


def _listing(fs, base: str, layout: Layout) -> dict[str, int]:
    """Every file the layout covers (path relative to the prefix -> size)."""
    import pyarrow.fs as pafs

    files: dict[str, int] = {}
    for p in layout:
        if p.endswith("/"):
            infos = fs.get_file_info(pafs.FileSelector(f"{base}/{p.rstrip('/')}", recursive=True))
        else:
            infos = fs.get_file_info([f"{base}/{p}"])
        for info in infos:
            if info.type == pafs.FileType.File:
                files[info.path[len(base) + 1:]] = info.size
    return files


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _copy(uri: str, layout: Layout, cache: Path, unit: str) -> None:
    import pyarrow.fs as pafs

    fs, base = _open(uri)
    started = time.perf_counter()
    scratch = cache / f".partial-{unit}-{uuid.uuid4().hex[:8]}"
    try:
        files = _listing(fs, base, layout)
        size = sum(files.values())
        free = shutil.disk_usage(cache).free
        if size > free:
            raise SweeperError(
                f"copying {shown(uri)} to {cache} needs {_size(size)}; {_size(free)} are free "
                f"(set {CACHE_ENV} to a folder on a bigger disk)", "data_root")
        local = pafs.LocalFileSystem()
        for p in layout:
            source, dest = f"{base}/{p.rstrip('/')}", str(scratch / p.rstrip("/"))
            if not p.endswith("/"):
                (scratch / p).parent.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(source, dest, source_filesystem=fs, destination_filesystem=local)
        # Trust nothing the copy did not deliver whole: every listed file, at its listed size.
        short = [f for f, n in files.items() if not (scratch / f).is_file() or (scratch / f).stat().st_size != n]
        if short:
            raise SweeperError(f"copy of {shown(uri)} came back incomplete ({short[0]} and {len(short) - 1} more)",
                               "data_root")
        record = {"source": shown(uri), "layout": list(layout), "files": len(files), "bytes": size,
                  "seconds": round(time.perf_counter() - started, 3), "host": socket.gethostname(),
                  "pid": os.getpid(), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (scratch / MARKER).write_text(json.dumps(record) + "\n")
        os.replace(scratch, cache / unit)  # the commit: the copy appears complete or not at all
    except SweeperError:
        raise
    except Exception as e:
        raise SweeperError(f"copying {shown(uri)} to {cache} failed ({_first_line(e)})", "data_root") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    with open(cache / LOG, "a") as f:  # the node's record of what it fetched (under the lock)
        f.write(json.dumps(record) + "\n")
