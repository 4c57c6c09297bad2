"""What a sweep will cost before it starts: trials x epochs x images x FLOPs per image, over the
machine's measured matrix-multiply rate.

FLOPs are counted with torch's own counter on the meta device (no memory, no compute). A training
step costs about 3 forward passes when weights train (forward, input gradients, weight gradients)
and about 2 when every conv is frozen (no weight-gradient kernels: the BN-only case).
"""
from __future__ import annotations

import functools
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from sweeper.data import DATASETS

# Training-set and test-set sizes of the in-memory datasets (for the estimate only).
SIZES = {"digits": (1442, 355), "cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000),
         "imagenet": (1_281_167, 50_000), "imagenet224": (1_281_167, 50_000)}
EFFICIENCY = 0.8  # share of the matmul rate a training step reaches (see BENCHMARKS.md)


@functools.lru_cache(maxsize=256)
def forward_flops(family: str, depth: int, width: int, dataset: str, activation: str, norm: str) -> int:
    """FLOPs of one forward pass of one image."""
    from sweeper.experiments.train.model import build_model
    from sweeper.experiments.train.spec import TrainSpec

    spec = TrainSpec.from_values({"family": family, "depth": depth, "width": width, "dataset": dataset,
                                  "activation": activation, "norm": norm})
    model = build_model(spec, device="meta")
    c, h, w = DATASETS[dataset].shape
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, c, h, w, device="meta"))
    return int(counter.get_total_flops())


@functools.lru_cache(maxsize=1)
def matmul_rate(threads: int = 1) -> float:
    """FLOP/s of a large fp32 matrix product on this machine, with `threads` threads."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(1024, 1024)
        a @ a
        start, reps = time.perf_counter(), 0
        while time.perf_counter() - start < 0.3:
            a @ a
            reps += 1
        return 2 * 1024**3 * reps / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(saved)


def trial_flops(spec) -> int | None:
    """Estimated FLOPs of one trial, or None for experiments without a model of their cost."""
    if getattr(spec, "experiment", None) != "train":
        return None
    train, test = SIZES[spec.dataset]
    train = min(spec.train_size, train) if spec.train_size else train
    test = min(spec.test_size, test) if spec.test_size else test
    f = forward_flops(spec.family, spec.depth, spec.width, spec.dataset, spec.activation, spec.norm)
    step = 2 if spec.trainable in ("bn", "output", "bn+output", "none") else 3
    return f * (spec.epochs * (train * step + test) + test)


def estimate(specs, cpus_per_trial: float = 1.0) -> dict:
    """Seconds of compute per trial and in all, at this machine's measured rate per trial."""
    import os

    rate = matmul_rate(max(1, min(int(cpus_per_trial), os.cpu_count() or 1))) * EFFICIENCY
    flops = [trial_flops(s) for s in specs]
    known = [f for f in flops if f is not None]
    return {
        "flops_per_second": rate,
        "trial_seconds": [None if f is None else f / rate for f in flops],
        "total_flops": sum(known),
        "total_trial_seconds": sum(known) / rate,
        "unknown_trials": len(flops) - len(known),
    }


def human(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"
