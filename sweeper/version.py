"""The code version recorded with every trial: the package version plus a hash of the package's
Python sources, e.g. `0.1.0+src.3f2a9c1b7d4e`.

Why a hash of the sources and not the git commit: on a cluster the project arrives by rsync
without `.git` (cluster.yaml), or as an installed wheel, so a commit is not there to read, and
every trial recorded the bare `0.1.0`. The sources are there wherever the code runs, and they are
what a result depends on, so the hash is the same on the laptop, the head and every worker that
runs the same code, and differs as soon as one line of it differs: edits not yet committed
included (which a commit id misses), commits that only touch docs or studies excluded (they change
no result, so `sweeper nightly --rerun-stale` has nothing to rerun). To find the commit of a hash,
compute `code_version()` at a commit: `git stash; git checkout C; python -c ...`.

What is hashed: every `*.py` file under the package folder, outside `__pycache__` and hidden
folders, by its path relative to that folder and its bytes, in sorted order: the files git tracks
there, which are the files rsync carries to the nodes (cluster.yaml filters by .gitignore) and
the files a wheel installs. A module deleted here but left on a node by an earlier sync is code
that node can import, and its hash says so.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__version__ = "0.1.0"


def source_hash(package: Path | None = None) -> str:
    """sha256 over the package's `*.py` files (relative path, NUL, bytes, NUL), 12 hex digits."""
    root = Path(package or Path(__file__).resolve().parent)
    digest = hashlib.sha256()
    files = (p for p in root.rglob("*.py")
             if not any(part == "__pycache__" or part.startswith(".") for part in p.relative_to(root).parts))
    for path in sorted(files):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    return f"{__version__}+src.{source_hash()}"
