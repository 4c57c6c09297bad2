"""Where a run's data are, and each dataset loaded once per process.

The root is --data-root, else $SWEEPER_DATA_ROOT: a local folder, or an s3:// or gs:// prefix that
each node copies once (sweeper.data.remote). A Ray actor that runs many trials keeps a dataset's
arrays between them (`load_arrays` caches).
"""
from __future__ import annotations

import os
from pathlib import Path

from sweeper.data import remote
from sweeper.data.datasets import DATASETS, Arrays
from sweeper.checks import user_path
from sweeper.errors import SweeperError

DATA_ROOT_ENV = "SWEEPER_DATA_ROOT"


def root_value(data_root: str | os.PathLike | None) -> str | None:
    """The data root a run names: --data-root, else $SWEEPER_DATA_ROOT (a path or a URI)."""
    value = data_root or os.environ.get(DATA_ROOT_ENV)
    return str(value) if value else None


def normalize_root(data_root: str | os.PathLike | None) -> str | None:
    """The root as the driver hands it to trials: a local path made absolute (a trial runs in its
    own working directory), an s3:// or gs:// URI unchanged."""
    value = root_value(data_root)
    if value is None or remote.is_remote(value):
        return value
    return str(user_path(value, _root_field(data_root)).resolve())


def resolve_root(data_root: str | os.PathLike | None) -> Path | None:
    """A local root as a path (None when none is named or the root is a URI)."""
    value = root_value(data_root)
    return None if value is None or remote.is_remote(value) else user_path(value, _root_field(data_root)).resolve()


def _root_field(data_root) -> str:
    """Which of the two ways the root was named, for an error message."""
    return "--data-root" if data_root else DATA_ROOT_ENV


def require_root(name: str, data_root: str | os.PathLike | None) -> Path | None:
    """The dataset's local root (None for a bundled dataset); a clear error when it needs one and
    has none. Under an s3:// or gs:// root, this node's copy of what the dataset reads (made by
    the first trial on the node that asks; see sweeper.data.remote)."""
    ds = DATASETS[name]
    value = root_value(data_root)
    if ds.needs_root and value is None:
        raise SweeperError(
            f"dataset {name} needs a data root: pass --data-root DIR or URI, or set {DATA_ROOT_ENV}", "data_root"
        )
    if ds.needs_root and remote.is_remote(value):
        return remote.fetch(value, ds.remote, f"{name} data")
    return resolve_root(value)


def check_data(name: str, data_root: str | os.PathLike | None) -> None:
    """Before any work: the dataset is where the run says (a one-line error naming --data-root
    otherwise). An in-memory dataset is loaded (and cached) here; a streamed one only checked;
    one under an s3:// or gs:// prefix only looked up (the nodes copy it, not the driver)."""
    ds = DATASETS[name]
    if not ds.needs_root:
        return
    value = root_value(data_root)
    if value is not None and remote.is_remote(value):
        remote.check(value, ds.remote, f"{name} data")
    elif ds.check is not None:
        ds.check(require_root(name, data_root))
    else:
        load_arrays(name, data_root)


_CACHE: dict[tuple, Arrays] = {}


def load_arrays(name: str, data_root: str | os.PathLike | None = None, download: bool = True) -> Arrays:
    """(x_train, y_train, x_test, y_test): uint8 (N, C, H, W) images and int64 labels, cached
    per process so that trials sharing a worker load the data once."""
    name = DATASETS.canonical(name)
    ds = DATASETS[name]
    root = require_root(name, data_root)
    key = (name, str(root) if ds.needs_root else None)
    if key not in _CACHE:
        # a copy from an object store is complete by construction: never "downloaded into"
        _CACHE[key] = ds.load(root, download and not remote.is_remote(root_value(data_root)))
    return _CACHE[key]
