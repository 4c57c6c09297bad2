"""CIFAR-10 and CIFAR-100 in the standard python batches layout, downloaded when a root lacks them."""
from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sweeper.data.datasets import DATASETS, Arrays, Dataset
from sweeper.errors import SweeperError


@dataclass(frozen=True)
class CifarLayout:
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    label_key: bytes
    url: str
    archive: str
    md5: str


CIFAR10 = CifarLayout(
    "cifar-10-batches-py",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch",
    b"labels",
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar-10-python.tar.gz",
    "c58f30108f718f92721af3b95e74349a",
)
CIFAR100 = CifarLayout(
    "cifar-100-python",
    ("train",),
    "test",
    b"fine_labels",
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    "cifar-100-python.tar.gz",
    "eb9058c3a382ffc7106e4002c42a8d85",
)


def find_cifar(root: Path, layout: CifarLayout) -> Path | None:
    """The batches folder under `root` (root itself, or root/<folder>), if complete."""
    for candidate in (root / layout.folder, root):
        if all((candidate / f).is_file() for f in (*layout.train_files, layout.test_file)):
            return candidate
    return None


def download_cifar(root: Path, layout: CifarLayout, url: str | None = None, md5: str | None = None):
    """Fetch and unpack the archive with torchvision's downloader (users with a network), once per
    node: concurrent trials wait on a lock beside the root and find the first one's result, and the
    archive unpacks into a scratch folder whose files are renamed into place, so a killed download
    never leaves a folder that looks complete."""
    from filelock import FileLock
    from torchvision.datasets.utils import download_and_extract_archive

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{layout.folder}.lock")):
        if find_cifar(root, layout) is not None:  # another process fetched it while this one waited
            return
        scratch = Path(tempfile.mkdtemp(prefix=f".{layout.folder}.partial-", dir=root))
        try:
            download_and_extract_archive(url or layout.url, str(scratch), filename=layout.archive,
                                         md5=md5 or layout.md5)
            unpacked, target = scratch / layout.folder, root / layout.folder
            if not target.exists():
                os.replace(unpacked, target)
            else:  # an incomplete folder of the user's: completed file by file, each rename atomic
                for f in (*layout.train_files, layout.test_file):
                    os.replace(unpacked / f, target / f)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        # The dataset's own format is a pickle; these files come from the data root, not the store.
        entry = pickle.load(f, encoding="bytes")
    x = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return x, np.asarray(entry[label_key], dtype=np.int64)


def _cifar_loader(layout: CifarLayout) -> Callable[[Path | None, bool], Arrays]:
    def load(root: Path | None, download: bool) -> Arrays:
        assert root is not None
        folder = find_cifar(root, layout)
        if folder is None and download:
            try:
                download_cifar(root, layout)
            except Exception as e:  # no network, refused, checksum: all reported the same way
                raise SweeperError(
                    f"no {layout.folder} under {root} and the download failed "
                    f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                    "data_root",
                ) from None
            folder = find_cifar(root, layout)
        if folder is None:
            raise SweeperError(f"no {layout.folder} under {root}", "data_root")
        parts = [_read_batch(folder / f, layout.label_key) for f in layout.train_files]
        x_test, y_test = _read_batch(folder / layout.test_file, layout.label_key)
        t = torch.from_numpy
        x_train = np.concatenate([p[0] for p in parts])
        y_train = np.concatenate([p[1] for p in parts])
        return t(x_train), t(y_train), t(x_test), t(y_test)

    return load


def _cifar_remote(layout: CifarLayout) -> tuple[tuple[str, ...], ...]:
    return (tuple(f"{layout.folder}/{f}" for f in (*layout.train_files, layout.test_file)),)


DATASETS.add("cifar10", Dataset(_cifar_loader(CIFAR10), 10, (3, 32, 32), True, "CIFAR-10, python batches",
                                remote=_cifar_remote(CIFAR10)), "cifar-10")
DATASETS.add("cifar100", Dataset(_cifar_loader(CIFAR100), 100, (3, 32, 32), True, "CIFAR-100, python batches",
                                 remote=_cifar_remote(CIFAR100)), "cifar-100")
