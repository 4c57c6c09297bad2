"""digits: scikit-learn's 1,797 8x8 images, the seconds-long embedded default (no data root)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from sweeper.data.datasets import DATASETS, Arrays, Dataset


def digits_file() -> Path | None:
    """The CSV that scikit-learn ships its digits in, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")  # a top-level find_spec runs none of the package
    for folder in (spec and spec.submodule_search_locations) or ():
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.exists():
            return path
    return None


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (images [N, 8, 8] of values 0..16, labels [N]). Read straight from
    the CSV that `load_digits` parses, because importing scikit-learn costs about 1.5 s in every trial
    process (scipy.stats comes with it), longer than a quickstart trial's training."""
    path = digits_file()
    if path is None:  # a scikit-learn that keeps its data elsewhere: ask it
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images, digits.target
    table = np.loadtxt(path, delimiter=",")  # one row per image: 64 pixels, then the label
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)


def _load_digits(root: Path | None, download: bool) -> Arrays:
    images, labels = read_digits()
    x = np.clip(images * 16.0, 0, 255).astype(np.uint8)[:, None]  # values 0..16 -> 0..255
    y = labels.astype(np.int64)
    # A fixed, stratified 80/20 split, independent of any trial's seed.
    rng = np.random.default_rng(0)
    test = np.zeros(len(y), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        test[rng.choice(idx, size=len(idx) // 5, replace=False)] = True
    t = torch.from_numpy
    return t(x[~test]), t(y[~test]), t(x[test]), t(y[test])


DATASETS.add("digits", Dataset(_load_digits, 10, (1, 8, 8), False, "scikit-learn's 8x8 digits (1,797 images)"))
