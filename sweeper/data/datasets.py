"""The dataset registry: the name a study file uses -> what a trial reads.

Each source module (digits, cifar, imagenet, imagenet_stream) defines its loader and adds its
entries here; `sweeper.data` imports them all, so the registry is full whichever module asks.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from sweeper.registry import Registry

# (x_train, y_train, x_test, y_test): uint8 (N, C, H, W) images and int64 labels
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
    # what a trial reads under a root, for copying it from an object-store prefix (sweeper.data.remote):
    # alternative layouts, each a tuple of paths relative to the root ("dir/" a folder, else a file)
    remote: tuple[tuple[str, ...], ...] = ()


DATASETS: Registry[Dataset] = Registry("dataset")
