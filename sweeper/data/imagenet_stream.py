"""Full-resolution ImageNet (dataset `imagenet224`), streamed from an ImageFolder root.

sweeper.data holds every other dataset in memory as uint8 tensors, which fits ImageNet only
downsampled (`imagenet`, 64x64: 16 GB). At 224x224 the 1.28M training images would need 190 GB, so here JPEGs
are decoded per batch by DataLoader workers through torchvision's transforms, the recipe of He et
al. (2016) that Frankle et al. train their ImageNet ResNets with: training images
RandomResizedCrop(224) and a horizontal flip; evaluation Resize(256) and CenterCrop(224); both
normalised with ImageNet's channel mean and standard deviation.

Augmentation is a pure function of (trial seed, epoch, image): the sampler hands each image its
own seed drawn from the epoch's generator, so the batches do not depend on the number of loader
workers, and a trial resumed from a checkpoint sees exactly the batches of an uninterrupted run.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset

from sweeper.data.batches import balanced_subset
from sweeper.data.datasets import DATASETS, Arrays, Dataset
from sweeper.data.imagenet import IMAGENET_REMOTE, imagenet_base
from sweeper.errors import SweeperError

SIZE = 224
RESIZE = 256
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MAX_WORKERS = 8


def _train_transforms():
    from torchvision import transforms as T

    crop = T.RandomResizedCrop(SIZE, antialias=True)
    centre = T.Compose([T.Resize(RESIZE, antialias=True), T.CenterCrop(SIZE)])
    flip = T.RandomHorizontalFlip()
    # the recipe's names (sweeper.data.batches.AUGMENTATIONS) mapped to their full-resolution ImageNet forms
    return {"none": [centre], "flip": [centre, flip], "crop": [crop], "crop_flip": [crop, flip]}


def _finish(steps: list):
    from torchvision import transforms as T

    return T.Compose([*steps, T.PILToTensor()])  # uint8 CHW; normalised on the batch


class SeededImages(TorchDataset):
    """ImageFolder images at given indices; item (i, seed) applies the transform with torch's
    RNG seeded by `seed`."""

    def __init__(self, images, indices: torch.Tensor, transform):
        self.images = images  # a torchvision ImageFolder (its file list, scanned once)
        self.indices = indices.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: tuple[int, int]):
        i, seed = item
        path, label = self.images.samples[self.indices[i]]
        image = self.images.loader(path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), label


class _Order(Sampler):
    """The (index, seed) pairs of the current pass; set before each pass."""

    def __init__(self):
        self.items: list[tuple[int, int]] = []

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def _one_thread(_):
    torch.set_num_threads(1)  # decoding workers must not compete with the trial's own threads


class StreamBatches:
    """Normalised float batches decoded from disk: the interface of sweeper.data.batches.Batches
    (`epoch`, `ordered`, `len`), for data that does not fit in memory."""

    def __init__(self, images, indices: torch.Tensor, batch_size: int, steps: list, device,
                 channels_last: bool, workers: int):
        self.data = SeededImages(images, indices, _finish(steps))
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1) * 255
        self.order = _Order()
        self.workers = workers
        self.loader = None

    def __len__(self) -> int:
        return len(self.data)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([self.data.images.targets[i] for i in self.data.indices], dtype=torch.long)

    def num_batches(self, drop_last: bool) -> int:
        n = len(self.data) // self.batch_size
        return n if drop_last or len(self.data) % self.batch_size == 0 else n + 1

    def _batches(self, items, drop_last: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.loader is None:  # built once: its workers persist across epochs
            self.loader = DataLoader(
                self.data, batch_size=self.batch_size, sampler=self.order, num_workers=self.workers,
                persistent_workers=self.workers > 0, worker_init_fn=_one_thread if self.workers else None,
                pin_memory=self.device.type == "cuda")
        # a pass always runs to its end (persistent workers are never left mid-pass): a dropped
        # last batch is left out of the order instead
        self.order.items = items[: len(items) // self.batch_size * self.batch_size] if drop_last else items
        for x, y in self.loader:
            x = (x.to(self.device, non_blocking=True).float() - self.mean) / self.std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)

    def epoch(self, g: torch.Generator, drop_last: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.data), generator=g).tolist()
        seeds = torch.randint(0, 2**62, (len(order),), generator=g).tolist()
        return self._batches(list(zip(order, seeds)), drop_last)

    def ordered(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches in dataset order; a random transform (the training set's, when norm statistics
        are calibrated on it) seeded by the image's position, so every pass is the same."""
        return self._batches([(i, i) for i in range(len(self.data))], drop_last=False)


@functools.lru_cache(maxsize=4)
def _scan(folder: str):
    """A folder's ImageFolder file list, kept per process: trials that share a Ray worker scan
    train/ (1.28M files) once, as in-memory datasets load once."""
    from torchvision.datasets import ImageFolder

    return ImageFolder(folder)


def stream_imagenet(spec, root: Path, device, channels_last: bool, workers: int):
    """(train, test) StreamBatches for `spec` from an ImageFolder root, with class-balanced
    subsets when spec.train_size / spec.test_size ask for them."""
    base = imagenet_base(root)
    train_images, test_images = _scan(str(base / "train")), _scan(str(base / "val"))
    if test_images.classes != train_images.classes:
        raise SweeperError(f"{base}: train/ and val/ hold different classes", "data_root")
    workers = max(0, min(MAX_WORKERS, workers))
    steps = _train_transforms()
    train = StreamBatches(train_images, balanced_subset(torch.tensor(train_images.targets), spec.train_size),
                          spec.batch_size, steps[spec.augment], device, channels_last, workers)
    test = StreamBatches(test_images, balanced_subset(torch.tensor(test_images.targets), spec.test_size),
                         max(spec.batch_size, 256), steps["none"], device, channels_last, workers)
    return train, test


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
