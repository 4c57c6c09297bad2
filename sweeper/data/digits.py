"""digits: scikit-learn's 1,797 8x8 images, the seconds-long embedded default (no data root)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sweeper.data.datasets import DATASETS, Arrays, Dataset


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
