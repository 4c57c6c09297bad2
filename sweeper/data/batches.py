"""The tensor-side input pipeline: class-balanced subsets, augmentation on whole batches, and
normalised batches from uint8 tensors held on the training device.

Augmentation runs per batch on tensors (no per-image PIL, no DataLoader worker processes competing
for the trial's cores); its randomness comes from the trial's generator alone.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch

from sweeper.registry import Registry


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
    """Random crops of `x` (N, C, H, W) after zero padding by `pad`, one offset per image. Given
    pixels (Batches crops before normalising), the zero border is black."""
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
        # Augment the uint8 pixels, then normalise: a crop's padding is then black (pixel 0), as in
        # the paper's pipeline (torchvision's RandomCrop(32, padding=4) before Normalize), not the
        # mean colour that padding normalised values with 0 gave. Cropping bytes is also cheaper.
        if g is not None:
            x = self.augment(x, g)
        x = (x.float() - self.mean) / self.std
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
