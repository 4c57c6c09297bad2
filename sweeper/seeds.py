"""Every random stream of a trial, derived from its spec's `seed` in one place.

A trial is a pure, seeded function of its spec, and stored results are pinned bit for bit
(tests/test_golden.py), so each stream keeps the formula it was recorded with: the formulas below
are the experiments' histories, not competing ideas. New code derives its streams with `derived`,
which gives independent streams for any tuple of integers (numpy's SeedSequence).

    train         weights, then γ/β, in module order      init(seed)
                  data order and augmentation of an epoch  epoch(seed, epoch)
                  which weights the `random` subset trains subset(seed)
    construction  target init 0, source weights 1, target training 2, BN-only baseline 3
                                                           stream(seed, k)
    decomposed    inputs, weights of layer l, projection, image choice
                                                           derived(seed, stream, ...)

Each returns an integer for `torch.Generator().manual_seed` or `numpy.random.default_rng`.
"""
from __future__ import annotations

import numpy as np


def init(seed: int) -> int:
    return int(seed)


def epoch(seed: int, epoch: int) -> int:
    # Depends on (seed, epoch) alone, so a trial resumed at epoch e sees the batches an
    # uninterrupted run would have.
    return seed * 1_000_003 + epoch


def subset(seed: int) -> int:
    return seed + 7919  # independent of the init draws


def stream(seed: int, k: int) -> int:
    return int(seed) * 1009 + k


def derived(*parts: int) -> int:
    """A 63-bit seed from integers: independent streams per purpose (and per layer)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))
