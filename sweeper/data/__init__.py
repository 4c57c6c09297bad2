"""Datasets: the registry, a loader per source, and the tensor-side input pipeline.

Every in-memory dataset is held once per process as uint8 tensors (N, C, H, W) plus int64 labels,
and augmented per batch on tensors; full-resolution ImageNet, too big for memory, is streamed.

    datasets.py         Dataset and the DATASETS registry (name -> loader, classes, shape, layout)
    digits.py           scikit-learn's 8x8 digits, the embedded default
    cifar.py            CIFAR-10/100 python batches, downloaded once per node when missing
    imagenet.py         ImageNet from an ImageFolder root, held in memory at 64x64
    imagenet_stream.py  ImageNet at 224x224, decoded per batch from the same root
    load.py             where a run's data are (--data-root, $SWEEPER_DATA_ROOT, a URI), loaded once
    remote.py           an s3:// or gs:// root copied once per node
    batches.py          balanced subsets, crop/flip augmentation, normalised batches on the device

What other modules use is importable from here: `from sweeper.data import DATASETS, load_arrays`.
"""
from __future__ import annotations

from sweeper.data import digits  # noqa: F401  (each source module registers its datasets on import)
from sweeper.data.batches import AUGMENTATIONS, Batches, balanced_subset, channel_stats, random_crop, random_flip
from sweeper.data.cifar import CIFAR10, CIFAR100, CifarLayout, download_cifar, find_cifar
from sweeper.data.datasets import DATASETS, Arrays, Dataset
from sweeper.data.imagenet import IMAGENET_SIZE, imagenet_base
from sweeper.data.imagenet_stream import stream_imagenet
from sweeper.data.load import (DATA_ROOT_ENV, check_data, load_arrays, normalize_root, require_root, resolve_root,
                               root_value)

__all__ = [
    "AUGMENTATIONS", "Arrays", "Batches", "CIFAR10", "CIFAR100", "CifarLayout", "DATASETS", "DATA_ROOT_ENV",
    "Dataset", "IMAGENET_SIZE", "balanced_subset", "channel_stats", "check_data", "download_cifar", "find_cifar",
    "imagenet_base", "load_arrays", "normalize_root", "random_crop", "random_flip", "require_root", "resolve_root",
    "root_value", "stream_imagenet",
]
