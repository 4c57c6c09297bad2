"""ImageNet from an ImageFolder root (train/<class>/, val/<class>/): where a root holds it, and the
in-memory dataset `imagenet`, every image decoded once and held at 64x64.

The full-resolution dataset streamed from the same root is sweeper.data.imagenet_stream.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sweeper.data.datasets import DATASETS, Arrays, Dataset
from sweeper.errors import SweeperError

IMAGENET_SIZE = 64  # the downsampled-ImageNet resolution (Chrabaszcz et al. 2017): 1.28M images fit in 16 GB
# the ImageFolder root's layouts under an object-store prefix (imagenet_base accepts both locally)
IMAGENET_REMOTE = (("train/", "val/"), ("imagenet/train/", "imagenet/val/"))


def imagenet_base(root: Path) -> Path:
    """The folder holding train/ and val/ (the root itself or root/imagenet)."""
    base = root / "imagenet" if (root / "imagenet" / "train").is_dir() else root
    if not (base / "train").is_dir() or not (base / "val").is_dir():
        raise SweeperError(
            f"no ImageNet under {root}: expected train/<class>/ and val/<class>/ image folders "
            "(ImageNet cannot be downloaded automatically)", "data_root")
    return base


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
