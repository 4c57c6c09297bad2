"""Dataset registry, loaders and the tensor-side input pipeline.

Every dataset is held once per process as uint8 tensors (N, C, H, W) plus int64 labels: a Ray
actor that runs many trials keeps it between them (`load_arrays` caches), and augmentation runs per
batch on tensors (no per-image PIL, no DataLoader worker processes competing for the trial's cores).
"""
from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from sweeper.data import remote as remote_data
from sweeper.errors import SweeperError
from sweeper.data.imagenet_stream import imagenet_base, stream_imagenet
from sweeper.registry import Registry

DATA_ROOT_ENV = "SWEEPER_DATA_ROOT"

Arrays = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Dataset:
    load: Callable[[Path | None, bool], Arrays]  # (root, allow_download) -> arrays
    num_classes: int
    shape: tuple[int, int, int]  # (channels, height, width) of one image
    needs_root: bool
    description: str
    # (spec, root, device, channels_last, loader workers) -> (train, test) batches, for a dataset
    # too big to hold in memory; such a dataset has no arrays (`load` refuses)
    stream: Callable | None = None
    check: Callable[[Path], object] | None = None  # a streamed dataset's cheap check that its root holds it
    # what a trial reads under a root, for copying it from an object-store prefix (sweeper.remote_data):
    # alternative layouts, each a tuple of paths relative to the root ("dir/" a folder, else a file)
    remote: tuple[tuple[str, ...], ...] = ()


DATASETS: Registry[Dataset] = Registry("dataset")


# -- digits: scikit-learn's 1,797 8x8 images, the seconds-long embedded default -------------------
def _load_digits(root: Path | None, download: bool) -> Arrays:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.clip(digits.images * 16.0, 0, 255).astype(np.uint8)[:, None]  # values 0..16 -> 0..255
    y = digits.target.astype(np.int64)
    # A fixed, stratified 80/20 split, independent of any trial's seed.
    rng = np.random.default_rng(0)
    test = np.zeros(len(y), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        test[rng.choice(idx, size=len(idx) // 5, replace=False)] = True
    t = torch.from_numpy
    return t(x[~test]), t(y[~test]), t(x[test]), t(y[test])


DATASETS.add("digits", Dataset(_load_digits, 10, (1, 8, 8), False, "scikit-learn's 8x8 digits (1,797 images)"))


# -- CIFAR-10/100 in the standard python batches layout -------------------------------------------
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


# -- ImageNet from an ImageFolder root, held in memory at 64x64 ---------------------------------
IMAGENET_SIZE = 64  # the downsampled-ImageNet resolution (Chrabaszcz et al. 2017): 1.28M images fit in 16 GB
# the ImageFolder root's layouts under an object-store prefix (imagenet_base accepts both locally)
IMAGENET_REMOTE = (("train/", "val/"), ("imagenet/train/", "imagenet/val/"))


def _imagefolder_arrays(folder: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every image under folder/<class>/ decoded, resized (shorter side) and centre-cropped to
    size x size, as uint8 (N, 3, size, size), with class indices in sorted class-name order."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(str(folder))
    x = np.empty((len(dataset.samples), 3, size, size), dtype=np.uint8)
    for i, (path, _) in enumerate(dataset.samples):
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            scale = size / min(w, h)
            img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
            w, h = img.size
            left, top = (w - size) // 2, (h - size) // 2
            x[i] = np.asarray(img.crop((left, top, left + size, top + size))).transpose(2, 0, 1)
    return x, np.asarray(dataset.targets, dtype=np.int64), dataset.classes


def _load_imagenet(root: Path | None, download: bool) -> Arrays:
    assert root is not None
    base = imagenet_base(root)
    x_tr, y_tr, classes = _imagefolder_arrays(base / "train", IMAGENET_SIZE)
    x_te, y_te, val_classes = _imagefolder_arrays(base / "val", IMAGENET_SIZE)
    if val_classes != classes:
        raise SweeperError(f"{base}: train/ and val/ hold different classes", "data_root")
    t = torch.from_numpy
    return t(x_tr), t(y_tr), t(x_te), t(y_te)


DATASETS.add(
    "imagenet",
    Dataset(_load_imagenet, 1000, (3, IMAGENET_SIZE, IMAGENET_SIZE), True,
            "ImageNet from an ImageFolder root (train/, val/), held at 64x64", remote=IMAGENET_REMOTE),
)


def _not_in_memory(root: Path | None, download: bool) -> Arrays:
    raise SweeperError("imagenet224 is streamed from disk, never held in memory as arrays; only the "
                       "train experiment reads it (the construction needs an in-memory dataset: imagenet, "
                       "cifar10, cifar100 or digits)", "dataset")


DATASETS.add(
    "imagenet224",
    Dataset(_not_in_memory, 1000, (3, 224, 224), True,
            "full-resolution ImageNet from an ImageFolder root (train/, val/), streamed: "
            "RandomResizedCrop(224) + flip, evaluation Resize(256) + CenterCrop(224)",
            stream=stream_imagenet, check=imagenet_base, remote=IMAGENET_REMOTE),
    "imagenet-full",
)


def root_value(data_root: str | os.PathLike | None) -> str | None:
    """The data root a run names: --data-root, else $SWEEPER_DATA_ROOT (a path or a URI)."""
    value = data_root or os.environ.get(DATA_ROOT_ENV)
    return str(value) if value else None


def normalize_root(data_root: str | os.PathLike | None) -> str | None:
    """The root as the driver hands it to trials: a local path made absolute (a trial runs in its
    own working directory), an s3:// or gs:// URI unchanged."""
    value = root_value(data_root)
    if value is None or remote_data.is_remote(value):
        return value
    return str(Path(value).expanduser().resolve())


def resolve_root(data_root: str | os.PathLike | None) -> Path | None:
    """A local root as a path (None when none is named or the root is a URI)."""
    value = root_value(data_root)
    return None if value is None or remote_data.is_remote(value) else Path(value).expanduser().resolve()


def require_root(name: str, data_root: str | os.PathLike | None) -> Path | None:
    """The dataset's local root (None for a bundled dataset); a clear error when it needs one and
    has none. Under an s3:// or gs:// root, this node's copy of what the dataset reads (made by
    the first trial on the node that asks; see sweeper.remote_data)."""
    ds = DATASETS[name]
    value = root_value(data_root)
    if ds.needs_root and value is None:
        raise SweeperError(
            f"dataset {name} needs a data root: pass --data-root DIR or URI, or set {DATA_ROOT_ENV}", "data_root"
        )
    if ds.needs_root and remote_data.is_remote(value):
        return remote_data.fetch(value, ds.remote, f"{name} data")
    return resolve_root(value)


def check_data(name: str, data_root: str | os.PathLike | None) -> None:
    """Before any work: the dataset is where the run says (a one-line error naming --data-root
    otherwise). An in-memory dataset is loaded (and cached) here; a streamed one only checked;
    one under an s3:// or gs:// prefix only looked up (the nodes copy it, not the driver)."""
    ds = DATASETS[name]
    if not ds.needs_root:
        return
    value = root_value(data_root)
    if value is not None and remote_data.is_remote(value):
        remote_data.check(value, ds.remote, f"{name} data")
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
        _CACHE[key] = ds.load(root, download and not remote_data.is_remote(root_value(data_root)))
    return _CACHE[key]


def balanced_subset(y: torch.Tensor, size: int) -> torch.Tensor:
    """Indices of the first size/C examples of each class (the same subset for every seed)."""
    if size <= 0 or size >= len(y):
        return torch.arange(len(y))
    classes = torch.unique(y)
    per_class = size // len(classes)
    extra = size - per_class * len(classes)
    picks = []
    for i, c in enumerate(classes):
        idx = torch.nonzero(y == c).flatten()
        picks.append(idx[: per_class + (1 if i < extra else 0)])
    return torch.sort(torch.cat(picks)).values


# -- augmentation, on whole batches of tensors ----------------------------------------------------
def random_crop(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Random crops of `x` (N, C, H, W) after zero padding by `pad`, one offset per image."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], generator=g) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


AUGMENTATIONS: Registry[Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = Registry("augmentation")
AUGMENTATIONS.add("none", lambda x, g: x)
AUGMENTATIONS.add("flip", random_flip)
AUGMENTATIONS.add("crop", lambda x, g: random_crop(x, 4, g))
# The paper's augmentation: random crop with 4-pixel padding and horizontal flip.
AUGMENTATIONS.add("crop_flip", lambda x, g: random_flip(random_crop(x, 4, g), g), "crop+flip")


class Batches:
    """Normalised float batches from uint8 tensors held on the training device."""

    def __init__(self, x, y, batch_size, mean, std, device, channels_last=False, augment="none"):
        self.x = x.to(device)
        self.y = y.to(device)
        self.batch_size = batch_size
        self.mean = (mean * 255).view(1, -1, 1, 1).to(device)
        self.std = (std * 255).view(1, -1, 1, 1).to(device)
        self.channels_last = channels_last
        self.augment = AUGMENTATIONS[augment]

    def __len__(self) -> int:
        return len(self.y)

    def num_batches(self, drop_last: bool) -> int:
        n = len(self.y) // self.batch_size
        return n if drop_last or len(self.y) % self.batch_size == 0 else n + 1

    def _prepare(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        x = (x.float() - self.mean) / self.std
        if g is not None:
            x = self.augment(x, g)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def epoch(self, g: torch.Generator, drop_last: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled, augmented batches; the order is a function of `g` alone."""
        order = torch.randperm(len(self.y), generator=g).to(self.x.device)
        for i in range(self.num_batches(drop_last)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self._prepare(self.x[idx], g), self.y[idx]

    def ordered(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Un-augmented batches in dataset order (evaluation)."""
        for i in range(self.num_batches(drop_last=False)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            yield self._prepare(self.x[sl], None), self.y[sl]


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images, as fractions of 255."""
    xf = x.float() / 255
    return xf.mean(dim=(0, 2, 3)), xf.std(dim=(0, 2, 3)).clamp_min(1e-3)
